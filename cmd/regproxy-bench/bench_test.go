package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuickRun runs the whole benchmark in quick mode against a real
// regproxy build, so that CI exercises the bench code. It checks that every
// row is reported, that each storm fetched its blob upstream once, and that
// the soak's clients got no wrong byte; the performance targets themselves
// are for full runs on a known machine. Where nginx is installed (make
// test-deps installs it), its peer rows must be there too. Scenario g's
// Azurite is a test dependency like the others: without it the test fails.
func TestQuickRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cfg := quickConfig()
	cfg.out = filepath.Join(t.TempDir(), "report.md")
	var stdout, progress bytes.Buffer
	if err := run(ctx, cfg, &stdout, &progress); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, &progress)
	}
	report := stdout.String()
	if written, err := os.ReadFile(cfg.out); err != nil || string(written) != report {
		t.Errorf("-out file differs from stdout (%v)", err)
	}
	want := []string{
		"Peer: nginx proxy_cache",
		"a. Warm hit, 32 MiB cached blob, 1 stream(s)",
		"a. Warm hit, 32 MiB cached blob, 8 stream(s)",
		"a. Warm hit: server CPU time per GiB served",
		"b. Cold pull, fresh 32 MiB blob: time",
		"b. Cold pull: throughput",
		"b. Cold pull: wait for the last byte",
		"c. Cold storm, 32 clients, fresh 32 MiB blob, upstream at 40 MB/s: upstream blob fetches",
		"c. Cold storm: time to first byte, median",
		"c. Cold storm: time to first byte, max",
		"c. Cold storm: of which connection set-up (CONNECT and TLS), median",
		"c. Cold storm: total time per client, median",
		"c. Cold storm: total time per client, max",
		"c. Verifying storm (every client checks sha256 as it reads): one upstream fill alone",
		"c. Verifying storm: the same 32 clients reading the blob from regproxy's cache (warm)",
		"c. Verifying storm: storm median total / the larger of those two",
		"c. Verifying storm: upstream blob fetches by the warm read",
		"d. Tag manifest hit, 200 sequential GETs on one keep-alive connection, in turns of 100 with the peers: p50",
		"d. Tag manifest hit: p99",
		"d. Tag manifest hit: server CPU time and context switches per GET",
		"d. Tag manifest hit: upstream manifest requests during the GETs (every side)",
		"d. Tag manifest hit: client connections to regproxy",
		"e. Peak RSS (VmHWM) of regproxy after scenarios a–d",
		"e. Peak RSS (VmHWM) of a fresh regproxy after 32 clients pull one cold 32 MiB blob",
		"e. That storm: upstream blob fetches",
		"f. Soak, 50 clients for 10s, random upstream faults: requests",
		"f. Soak: failed requests by cause",
		"f. Soak: wrong bytes",
		"f. Soak: bodies that ended early yet looked complete",
		"f. Soak: upstream faults injected",
		"f. Soak: regproxy's outcomes (its access log)",
		"f. Soak: regproxy RSS (VmRSS)",
		"f. Soak: regproxy threads",
		"f. Soak: regproxy open files",
		"g. Azure backend (`--storage azure`, no local tier) against Azurite",
		"g. Azure cold fill, fresh 32 MiB blob, upstream unthrottled, 1 client: blob committed in Azure after the last upstream byte",
		"g. Azure cold fill, upstream unthrottled: regproxy's fill rate (median), against Azurite's own ingest rate",
		"g. Azure cold fill, fresh 32 MiB blob, upstream at 40 MB/s, 1 client: blob committed in Azure after the last upstream byte",
		"g. Azure warm hit, 32 MiB blob in Azurite, 1 stream(s): throughput",
		"g. Azure warm hit, 1 stream(s): CPU time per GiB read: Azurite / regproxy / the bench's clients",
		"g. Azure warm hit, 32 MiB blob in Azurite, 8 stream(s): throughput",
		"g. Azure warm hit, 8 stream(s): CPU time per GiB read",
		"g. Azure warm hits: upstream blob fetches during them",
		"g. Peak RSS (VmHWM) of a fresh regproxy --storage azure after 32 clients pull one cold 32 MiB blob",
		"g. That storm: upstream blob fetches",
		"g. That storm: total time per client, median / max; blob committed in Azure",
	}
	if bin, _ := findNginx(""); bin != "" {
		want = append(want,
			"a. Warm hit, 1 stream(s), against nginx proxy_cache: throughput",
			"a. Warm hit, 8 stream(s), against nginx proxy_cache: throughput",
			"c. Storm against nginx proxy_cache",
			"c. Storm against nginx: total time per client, median",
			"d. Tag manifest hit against nginx proxy_cache (same loop, in turns): p50",
			"d. Tag manifest hit against nginx: p99",
			"d. Tag manifest hit against nginx: server CPU time and context switches per GET",
		)
	} else if !strings.Contains(cell(report, "Peer: nginx", 2), "not installed") {
		t.Errorf("no nginx here, and the peer row does not say so:\n%s", report)
	}
	for _, w := range want {
		if !strings.Contains(report, "| "+w) {
			t.Errorf("no row %q in the report:\n%s", w, report)
		}
	}
	for metric, want := range map[string]string{
		"upstream at 40 MB/s: upstream blob fetches":    "1",
		"e. That storm: upstream blob fetches":          "1",
		"c. Storm against nginx proxy_cache":            "1", // regproxy's own count in that storm
		"f. Soak: wrong bytes":                          "0",
		"f. Soak: bodies that ended early yet looked":   "0",
		"c. Verifying storm: upstream blob fetches by ": "0",
		"g. Azure warm hits: upstream blob fetches":     "0",
		"g. That storm: upstream blob fetches":          "1",
	} {
		if got := cell(report, metric, 2); got != want && !(got == "" && strings.Contains(metric, "nginx")) {
			t.Errorf("row %q: regproxy value %q, want %s", metric, got, want)
		}
	}
	if got := cell(report, "f. Soak, 50 clients", 2); strings.HasPrefix(got, "0 ") {
		t.Errorf("the soak made no request: %q", got)
	}
	if got := cell(report, "g. Azure backend", 2); !strings.HasPrefix(got, "Azurite ") {
		t.Errorf("scenario g did not run against Azurite: %q", got)
	}
}

// cell returns column i (1 is the metric) of the first table row whose
// metric contains metric, trimmed.
func cell(report, metric string, i int) string {
	for line := range strings.Lines(report) {
		cells := strings.Split(line, "|")
		if len(cells) > i && strings.Contains(cells[1], metric) {
			return strings.TrimSpace(cells[i])
		}
	}
	return ""
}
