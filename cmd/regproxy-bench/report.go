package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// row is one line of the results table. Empty cells print as "—".
type row struct {
	metric string
	value  string // regproxy's
	peer   string // the baseline's or the direct peer's, where there is one
	ratio  string // value / peer
	target string
	met    string // "yes", "no" or empty when there is no target
}

// verdict is "yes" or "no".
func verdict(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

// machine describes where the bench ran.
type machine struct {
	cpus     string
	model    string
	goVer    string
	kernel   string
	revision string
	date     string
	busy     string // the machine's CPU use just before the run, by others
}

// describeMachine gathers nproc, the CPU model, the Go toolchain that built
// regproxy, the kernel and the work tree's revision.
func describeMachine(ctx context.Context) machine {
	m := machine{
		cpus:   command(ctx, "nproc"),
		model:  cpuModel(),
		goVer:  command(ctx, "go", "version"),
		kernel: readTrim("/proc/sys/kernel/osrelease"),
		busy:   cpuBusy(ctx),
		date:   time.Now().UTC().Format("2006-01-02 15:04 MST"),
		// A tree that is not a git checkout simply has no revision.
		revision: command(ctx, "git", "describe", "--always", "--dirty"),
	}
	if m.cpus == "" {
		m.cpus = fmt.Sprint(runtime.NumCPU())
	}
	return m
}

// command runs name and returns its trimmed output, or "" on failure.
func command(ctx context.Context, name string, args ...string) string {
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// cpuBusy samples the machine's CPU use over one second from /proc/stat,
// as a percentage of all CPUs, or "" where /proc does not say.
func cpuBusy(ctx context.Context) string {
	busy0, total0 := cpuTicks()
	select {
	case <-time.After(time.Second):
	case <-ctx.Done():
		return ""
	}
	busy1, total1 := cpuTicks()
	if total1 <= total0 {
		return ""
	}
	return fmt.Sprintf("%.0f%%", 100*float64(busy1-busy0)/float64(total1-total0))
}

// cpuTicks returns the busy and total ticks of all CPUs from the first
// eight columns of the "cpu" line (user to steal; the guest columns repeat
// user). Idle and iowait are not busy.
func cpuTicks() (busy, total int64) {
	line, _, _ := strings.Cut(readTrim("/proc/stat"), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0
	}
	for i, v := range f[1:9] {
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// cpuModel is the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	for line := range strings.Lines(readTrim("/proc/cpuinfo")) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// render is the report: the machine, then the table.
func render(m machine, cfg config, rows []row) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## regproxy benchmark (%s run)\n\n", cfg.mode())
	fmt.Fprintf(&b, "- machine: %s CPUs (nproc), %s, Linux %s\n", m.cpus, m.model, m.kernel)
	fmt.Fprintf(&b, "- toolchain: %s\n", m.goVer)
	fmt.Fprintf(&b, "- regproxy: work tree at %s\n", orDash(m.revision))
	fmt.Fprintf(&b, "- date: %s\n", m.date)
	fmt.Fprintf(&b, "- CPU busy in the second before the run: %s; after it: %s (other processes share this machine)\n",
		orDash(m.busy), orDash(cpuBusy(context.Background())))
	if cfg.quick {
		b.WriteString("- quick mode: smaller blobs and fewer requests; the targets are those of the full run\n")
	}
	b.WriteString("\n| metric | regproxy | baseline / peer | ratio | target | met? |\n")
	b.WriteString("|---|--:|--:|--:|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n",
			r.metric, orDash(r.value), orDash(r.peer), orDash(r.ratio), orDash(r.target), orDash(r.met))
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// median of xs (the mean of the middle two for an even count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// percentile is the nearest-rank p-th percentile of ds (0 < p ≤ 100).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	rank := int(p/100*float64(len(s)) + 0.999999)
	return s[min(max(rank, 1), len(s))-1]
}

// seconds converts durations to float seconds.
func seconds(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = d.Seconds()
	}
	return out
}

// Formatting helpers: one place decides the precision of each unit.
func fmtMBps(v float64) string  { return fmt.Sprintf("%.0f MB/s", v) }
func fmtSec(v float64) string   { return fmt.Sprintf("%.2f s", v) }
func fmtRatio(v float64) string { return fmt.Sprintf("%.2f×", v) }
func fmtMiB(bytes int64) string { return fmt.Sprintf("%.1f MiB", float64(bytes)/(1<<20)) }
func fmtMs(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	if ms < 10 {
		return fmt.Sprintf("%.3f ms", ms)
	}
	return fmt.Sprintf("%.0f ms", ms)
}

// sizeName names a blob size for the metric column.
func sizeName(n int64) string { return fmt.Sprintf("%d MiB", n>>20) }
