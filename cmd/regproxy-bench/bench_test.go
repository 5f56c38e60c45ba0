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
// row is reported and that the storm fetched its blob upstream once; the
// performance targets themselves are for full runs on a known machine.
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
	for _, want := range []string{
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
		"d. Tag manifest hit, 200 sequential GETs on one keep-alive connection: p50",
		"d. Tag manifest hit: p99",
		"d. Tag manifest hit: upstream manifest requests during the GETs",
		"d. Tag manifest hit: client connections to regproxy",
		"e. Peak RSS (VmHWM) of regproxy after scenarios a–d",
		"e. Peak RSS (VmHWM) of a fresh regproxy after 32 clients pull one cold 32 MiB blob",
		"e. That storm: upstream blob fetches",
	} {
		if !strings.Contains(report, "| "+want) {
			t.Errorf("no row %q in the report:\n%s", want, report)
		}
	}
	for _, metric := range []string{"upstream at 40 MB/s: upstream blob fetches", "e. That storm: upstream blob fetches"} {
		if got := cell(report, metric, 2); got != "1" {
			t.Errorf("row %q: regproxy value %q, want 1 upstream fetch", metric, got)
		}
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
