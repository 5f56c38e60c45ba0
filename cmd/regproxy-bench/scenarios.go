package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Targets, as the benchmark states them.
const (
	targetHitRatio   = 0.95                    // a: regproxy / baseline
	targetTTFB       = 100 * time.Millisecond  // c: median time to first byte
	targetStormTotal = 2200 * time.Millisecond // c: median total for 64 MiB; scaled with size
	targetP50        = 200 * time.Microsecond  // d
	targetP99        = 500 * time.Microsecond  // d
	targetRSS        = 64 * mib                // e
)

// Time limits of the scenarios. Every loop is also bounded in count.
const (
	warmTimeout     = 4 * time.Minute
	coldTimeout     = 3 * time.Minute
	stormTimeout    = 2 * time.Minute
	manifestTimeout = time.Minute
	rssTimeout      = 3 * time.Minute
)

// bench holds what the scenarios share: the binaries, the upstream and
// the regproxy process under test.
type bench struct {
	cfg      config
	dir      string
	bins     binaries
	pki      *pki
	up       *upstream
	rp       *regproxy // replaced by a fresh process for the RSS scenario
	progress io.Writer
}

// setup builds the binaries and starts the upstream and regproxy. On error
// it stops what it started.
func setup(ctx context.Context, cfg config, dir string, progress io.Writer) (*bench, error) {
	b := &bench{cfg: cfg, dir: dir, progress: progress}
	b.logf("building regproxy and the baseline server")
	var err error
	if b.bins, err = build(ctx, dir); err != nil {
		return nil, err
	}
	if b.pki, err = newPKI(dir); err != nil {
		return nil, err
	}
	if b.up, err = startUpstream(dir, b.pki); err != nil {
		return nil, err
	}
	if b.rp, err = startRegproxy(ctx, b.bins.regproxy, dir, b.up, b.pki.caFile); err != nil {
		b.up.close()
		return nil, err
	}
	b.logf("regproxy pid %d on %s; upstream %s at %s", b.rp.cmd.Process.Pid, b.rp.addr, b.up.host(), b.up.addr())
	return b, nil
}

// close stops regproxy and the upstream.
func (b *bench) close() {
	b.stopRegproxy()
	b.up.close()
}

// stopRegproxy stops regproxy (SIGTERM, then SIGKILL) and passes on
// whatever it logged at --log-level warn.
func (b *bench) stopRegproxy() {
	b.rp.stop()
	if tail := b.rp.tail(); tail != "" {
		b.logf("regproxy pid %d logged (end of its log):\n%s", b.rp.cmd.Process.Pid, tail)
	}
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.progress, "regproxy-bench: "+format+"\n", args...)
}

// runAll runs the scenarios in order. The RSS scenario comes last: it
// restarts regproxy. On error it returns the rows measured so far.
func (b *bench) runAll(ctx context.Context) ([]row, error) {
	var rows []row
	for _, s := range []struct {
		name    string
		run     func(context.Context) ([]row, error)
		profile string // the profile's name; "" for e, which profiles its own fresh process
	}{
		{"a. warm hits", b.warmHits, "a-warm-hits"},
		{"b. cold pulls", b.coldPulls, "b-cold-pulls"},
		{"c. cold storm", b.coldStorm, "c-cold-storm"},
		{"d. tag manifest hits", b.manifestHits, "d-manifest-hits"},
		{"e. peak RSS", b.peakRSS, ""},
	} {
		if b.cfg.only != "" && !strings.Contains(b.cfg.only, s.name[:1]) {
			continue
		}
		b.logf("%s", s.name)
		start := time.Now()
		stop := func() {}
		if s.profile != "" {
			stop = b.profile(b.rp.proc, s.profile)
		}
		r, err := s.run(ctx)
		stop()
		rows = append(rows, r...)
		if err != nil {
			return rows, fmt.Errorf("%s: %w", s.name, err)
		}
		b.logf("%s: done in %.1f s", s.name, time.Since(start).Seconds())
	}
	return rows, nil
}

// blobURL is the URL of a blob on the upstream, as clients name it.
func (b *bench) blobURL(bl *blob) string { return "https://" + b.up.host() + blobPath(bl) }

// warmHits compares cache-hit throughput through regproxy's MITM path with
// the baseline server's, on one stream and on cfg.streams at once.
func (b *bench) warmHits(ctx context.Context) ([]row, error) {
	ctx, cancel := context.WithTimeout(ctx, warmTimeout)
	defer cancel()
	bl, err := b.up.addBlob(b.cfg.warmSize, 0)
	if err != nil {
		return nil, err
	}
	defer b.up.removeBlob(bl)
	bp, baddr, err := startBaseline(ctx, b.bins.baseline, b.dir, b.pki, bl.path)
	if err != nil {
		return nil, err
	}
	defer bp.stop()
	defer b.profile(bp, "a-warm-hits-baseline")()
	proxied, direct := proxiedClient(b.rp.addr, b.rp.roots), directClient(baddr, b.pki.pool)
	defer proxied.CloseIdleConnections()
	defer direct.CloseIdleConnections()
	url := b.blobURL(bl)
	if _, err := pull(ctx, proxied, url, bl.size, bl.digest); err != nil {
		return nil, fmt.Errorf("warming the cache: %w", err)
	}
	var rows []row
	var cpu [2]time.Duration // regproxy's and the baseline's, over all timed runs
	var served int64
	for _, streams := range []int{1, b.cfg.streams} {
		rp, base, err := b.compareHits(ctx, proxied, direct, bp, url, bl.size, streams)
		if err != nil {
			return rows, err
		}
		cpu[0], cpu[1] = cpu[0]+rp.cpu, cpu[1]+base.cpu
		served += int64(streams*b.cfg.warmRuns) * bl.size
		ratio := rp.mbps / base.mbps
		rows = append(rows, row{
			metric: fmt.Sprintf("a. Warm hit, %s cached blob, %d stream(s): throughput (median of %d)",
				sizeName(bl.size), streams, b.cfg.warmRuns),
			value: fmtMBps(rp.mbps), peer: fmtMBps(base.mbps), ratio: fmtRatio(ratio),
			target: fmt.Sprintf("≥ %.2f× baseline", targetHitRatio), met: verdict(ratio >= targetHitRatio),
		})
	}
	if n := bl.gets.Load(); n != 1 {
		b.logf("warning: the warm blob was fetched upstream %d times, want 1: hits were not hits", n)
	}
	perGiB := func(d time.Duration) float64 { return d.Seconds() / (float64(served) / (1 << 30)) }
	return append(rows, row{
		metric: "a. Warm hit: server CPU time per GiB served (all timed runs)",
		value:  fmtSec(perGiB(cpu[0])), peer: fmtSec(perGiB(cpu[1])), ratio: fmtRatio(perGiB(cpu[0]) / perGiB(cpu[1])),
	}), nil
}

// hitStats is one side of a warm-hit comparison.
type hitStats struct {
	mbps float64       // median throughput of the timed rounds
	cpu  time.Duration // the server's CPU time over all of them
}

// compareHits times cfg.warmRuns rounds of streams concurrent pulls through
// each client, alternating which goes first, after one untimed round each
// that opens the connections. It returns regproxy's stats, then the
// baseline's.
func (b *bench) compareHits(ctx context.Context, proxied, direct *http.Client, bp *proc, url string, size int64, streams int) (rp, base hitStats, err error) {
	sides := []struct {
		client *http.Client
		server *proc
		mbps   []float64
		cpu    []time.Duration // the server's CPU time in each round
	}{{client: proxied, server: b.rp.proc}, {client: direct, server: bp}}
	for _, s := range sides {
		if _, err := round(ctx, s.client, url, size, streams); err != nil {
			return rp, base, err
		}
	}
	for i := range b.cfg.warmRuns {
		for j := range sides {
			s := &sides[(i+j)%len(sides)]
			cpu := s.server.cpuTime()
			v, err := round(ctx, s.client, url, size, streams)
			if err != nil {
				return rp, base, err
			}
			s.mbps, s.cpu = append(s.mbps, v), append(s.cpu, s.server.cpuTime()-cpu)
		}
		b.logf("  %d stream(s), run %d: regproxy %.0f MB/s (its CPU %.2f s), baseline %.0f MB/s (its CPU %.2f s)",
			streams, i+1, sides[0].mbps[i], sides[0].cpu[i].Seconds(), sides[1].mbps[i], sides[1].cpu[i].Seconds())
	}
	stats := func(i int) hitStats {
		var sum time.Duration
		for _, d := range sides[i].cpu {
			sum += d
		}
		return hitStats{mbps: median(sides[i].mbps), cpu: sum}
	}
	return stats(0), stats(1), nil
}

// round pulls url on n streams at once and returns the aggregate MB/s.
func round(ctx context.Context, c *http.Client, url string, size int64, n int) (float64, error) {
	start := time.Now()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { _, errs[i] = pull(ctx, c, url, size, "") })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return 0, err
		}
	}
	return float64(n) * float64(size) / time.Since(start).Seconds() / 1e6, nil
}

// coldPulls times pulls of fresh blobs through regproxy, which fetches,
// spools, verifies and commits while it streams, against pulls of the same
// blobs straight from the upstream.
func (b *bench) coldPulls(ctx context.Context) ([]row, error) {
	ctx, cancel := context.WithTimeout(ctx, coldTimeout)
	defer cancel()
	proxied, direct := proxiedClient(b.rp.addr, b.rp.roots), directClient(b.up.addr(), b.pki.pool)
	defer proxied.CloseIdleConnections()
	defer direct.CloseIdleConnections()
	// Open every connection first (the ping passes through regproxy to the
	// upstream), so that the runs time the data path.
	for _, c := range []*http.Client{proxied, direct} {
		if _, err := get(ctx, c, "https://"+b.up.host()+"/v2/", nil); err != nil {
			return nil, err
		}
	}
	var rps, directs, lasts []float64
	for i := range b.cfg.coldRuns {
		cpu := b.rp.cpuTime()
		r, d, err := b.coldPull(ctx, proxied, direct)
		if err != nil {
			return nil, err
		}
		rps, directs = append(rps, r.total.Seconds()), append(directs, d.total.Seconds())
		lasts = append(lasts, r.lastByte.Seconds())
		b.logf("  run %d: regproxy %.2f s (last byte after %.3f s more; its CPU %.2f s), direct %.2f s",
			i+1, r.total.Seconds(), r.lastByte.Seconds(), (b.rp.cpuTime() - cpu).Seconds(), d.total.Seconds())
	}
	rp, dir := median(rps), median(directs)
	size := float64(b.cfg.coldSize)
	return []row{{
		metric: fmt.Sprintf("b. Cold pull, fresh %s blob: time (median of %d)", sizeName(b.cfg.coldSize), b.cfg.coldRuns),
		value:  fmtSec(rp), peer: fmtSec(dir) + " direct", ratio: fmtRatio(rp / dir),
	}, {
		metric: "b. Cold pull: throughput",
		value:  fmtMBps(size / rp / 1e6), peer: fmtMBps(size/dir/1e6) + " direct", ratio: fmtRatio(dir / rp),
	}, {
		metric: "b. Cold pull: wait for the last byte (regproxy holds it until verified and committed), median",
		value:  fmtSec(median(lasts)),
	}}, nil
}

// coldPull pulls one fresh blob directly, then through regproxy.
func (b *bench) coldPull(ctx context.Context, proxied, direct *http.Client) (rp, dir pullResult, err error) {
	bl, err := b.up.addBlob(b.cfg.coldSize, 0)
	if err != nil {
		return rp, dir, err
	}
	defer b.up.removeBlob(bl)
	if dir, err = pull(ctx, direct, b.blobURL(bl), bl.size, ""); err != nil {
		return rp, dir, err
	}
	if rp, err = pull(ctx, proxied, b.blobURL(bl), bl.size, ""); err != nil {
		return rp, dir, err
	}
	if n := bl.gets.Load(); n != 2 {
		b.logf("warning: the cold blob was fetched upstream %d times, want 2 (one direct, one by regproxy)", n)
	}
	return rp, dir, nil
}
