package main

import (
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/metrics"
)

// lines splits what b holds into lines.
func lines(b *syncBuffer) []string {
	return strings.FieldsFunc(b.String(), func(r rune) bool { return r == '\n' })
}

// upstreamBody sends one request through m's upstream Transport, whose
// answer has n body bytes, and reads them.
func upstreamBody(t *testing.T, m *metrics.Metrics, n int) {
	t.Helper()
	rt := m.Transport(roundTripFunc(func(req *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(strings.Repeat("x", n))), Request: req}, nil
	}), func(*http.Request) string { return "registry.test" })
	resp, err := rt.RoundTrip(&http.Request{Method: "GET", Header: http.Header{}})
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestSummaryLine: every interval, one line with what the interval
// brought; the cache figures appear once the eviction index registers.
func TestSummaryLine(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := metrics.New()
		m.Request("registry.test", "blob", "hit") // before the start: not in the first line
		var out syncBuffer
		log := slog.New(slog.NewTextHandler(&out, nil))
		stop := startSummary(m, 5*time.Minute, log)
		defer stop()

		for _, outcome := range []string{"hit", "hit", "joined", "miss", "tunnel"} {
			m.Request("registry.test", "blob", outcome)
		}
		m.Served("registry.test", "blob", "hit", 5000)
		upstreamBody(t, m, 1000)
		m.FillStarted()
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		m.SetCacheStats(func() metrics.CacheStats {
			return metrics.CacheStats{Blobs: metrics.KindStats{Entries: 2, Bytes: 300}, Tags: metrics.KindStats{Entries: 1, Bytes: 20}, MaxBytes: 1000}
		})
		time.Sleep(5 * time.Minute)
		synctest.Wait()

		lines := lines(&out)
		if len(lines) != 2 {
			t.Fatalf("%d lines after two intervals; want 2:\n%s", len(lines), strings.Join(lines, "\n"))
		}
		for i, want := range []string{
			"msg=summary interval=5m0s requests=5 hit_ratio=0.750 bytes_served=5000 bytes_upstream=1000 bytes_saved=4000 fills_in_flight=1",
			"msg=summary interval=5m0s requests=0 bytes_served=0 bytes_upstream=0 bytes_saved=0 fills_in_flight=1 cache_bytes=320 cache_entries=3 cache_max_bytes=1000",
		} {
			if !strings.HasSuffix(lines[i], want) {
				t.Errorf("line %d:\n  %s\nwant it to end with\n  %s", i+1, lines[i], want)
			}
		}
	})
}

// TestSummaryOff: 0 logs nothing.
func TestSummaryOff(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var out syncBuffer
		stop := startSummary(metrics.New(), 0, slog.New(slog.NewTextHandler(&out, nil)))
		time.Sleep(time.Hour)
		synctest.Wait()
		stop()
		if lines := lines(&out); len(lines) != 0 {
			t.Errorf("--log-summary-interval 0 logged %q", lines)
		}
	})
}

func TestSummaryInterval(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		value string
		want  time.Duration
		bad   bool
	}{
		{"", 5 * time.Minute, false}, // the default
		{"0", 0, false},
		{"30s", 30 * time.Second, false},
		{"1d", 24 * time.Hour, false},
		{"-1m", 0, true},
		{"often", 0, true},
	} {
		set := flag.NewFlagSet("serve", flag.ContinueOnError)
		if err := summaryFlag().Apply(set); err != nil {
			t.Fatal(err)
		}
		if tc.value != "" {
			set.Parse([]string{"--log-summary-interval", tc.value})
		}
		got, err := summaryInterval(cli.NewContext(nil, set, nil))
		if got != tc.want || (err != nil) != tc.bad {
			t.Errorf("--log-summary-interval %q: %v, %v; want %v, error %v", tc.value, got, err, tc.want, tc.bad)
		}
	}
}

// TestSummaryIntervalUsageError: a bad value stops serve with exit code 2
// before anything touches the disk.
func TestSummaryIntervalUsageError(t *testing.T) {
	code, stdout, stderr := runCLI(t, serveArgs(t, "--log-summary-interval", "sometimes")...)
	wantUsageError(t, "--log-summary-interval", code, stdout, stderr)
}

// TestServeLogsSummary runs serve with a short --log-summary-interval: a
// summary line comes, with the requests of its interval (the health check
// and a scrape) and the cache figures of the eviction index.
func TestServeLogsSummary(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "--log-summary-interval", "300ms")
	if code, _, err := d.get("/metrics"); err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d, %v", code, err)
	}
	var line map[string]any
	for deadline := time.Now().Add(10 * time.Second); line == nil && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for l := range strings.Lines(d.log.String()) {
			var e map[string]any
			if json.Unmarshal([]byte(l), &e) == nil && e["msg"] == "summary" && e["requests"].(float64) > 0 {
				line = e
				break
			}
		}
	}
	if line == nil {
		t.Fatalf("no summary line with requests in 10s:\n%s", d.log)
	}
	for _, field := range []string{"interval", "requests", "bytes_saved", "fills_in_flight", "cache_bytes", "cache_entries"} {
		if _, ok := line[field]; !ok {
			t.Errorf("summary line %v lacks %s", line, field)
		}
	}
}
