package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regproxy/regproxy/cachestore/evict/evicttest"
)

// TestServeReportsCacheMetrics runs serve on a cache it did not fill: the
// eviction index reads it at start, and /metrics reports its figures. The
// cap comes from rpardini's variable, in nginx's units.
func TestServeReportsCacheMetrics(t *testing.T) {
	t.Parallel()
	dataDir, _ := testCache(t)
	d := startDaemonEnv(t, []string{"CACHE_MAX_SIZE=1g"}, "--data-dir", dataDir)
	if !d.waitLogged(0, func(e logEntry) bool { return e.Msg == "cache index loaded" }) {
		t.Fatal(`no "cache index loaded" line`)
	}
	code, body, err := d.get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d, %v", code, err)
	}
	for _, want := range []string{
		`regproxy_cache_entries{kind="blob"} 2`,
		`regproxy_cache_bytes{kind="tag"} 169`,
		`regproxy_cache_max_bytes 1.073741824e+09`,
		`regproxy_cache_index_loaded 1`,
		`regproxy_cache_evictions_total 0`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// BenchmarkServeStartWith100kEntries starts serve on a cache of 100k
// entries, and reports how long the proxy port took to answer /healthz
// and how long the eviction index took to be complete, both from the
// process's start.
func BenchmarkServeStartWith100kEntries(b *testing.B) {
	dataDir := b.TempDir()
	evicttest.Populate(b, filepath.Join(dataDir, "cache"), 100_000)
	var port, index time.Duration
	for b.Loop() {
		p, i := startTimed(b, dataDir)
		port += p
		index += i
	}
	b.ReportMetric(float64(port.Milliseconds())/float64(b.N), "ms-to-port")
	b.ReportMetric(float64(index.Milliseconds())/float64(b.N), "ms-to-index")
}

// startTimed runs serve on dataDir until its index is loaded, then stops
// it with SIGTERM.
func startTimed(b *testing.B, dataDir string) (port, index time.Duration) {
	log := &syncBuffer{}
	cmd := exec.Command(binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--log-format", "json")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + b.TempDir()}
	cmd.Stdout, cmd.Stderr = log, log
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	d := &daemon{log: log}
	for port == 0 || index == 0 {
		if time.Since(start) > time.Minute {
			b.Fatalf("serve did not start and load its index within a minute:\n%s", log)
		}
		if d.addr == "" {
			for _, e := range d.entries(0) {
				if e.Msg == "regproxy serving" {
					d.addr = e.Listen
				}
			}
		}
		if port == 0 && d.addr != "" {
			if code, _, err := d.get("/healthz"); err == nil && code == http.StatusOK {
				port = time.Since(start)
			}
		}
		if index == 0 && d.logged(0, func(e logEntry) bool { return e.Msg == "cache index loaded" }) {
			index = time.Since(start)
		}
		time.Sleep(time.Millisecond)
	}
	return port, index
}
