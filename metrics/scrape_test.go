package metrics_test

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/regproxy/regproxy/metrics"
)

// TestParseSnapshot reads a scrape of /metrics as another process would:
// the same figures as the server's own Snapshot, and its start time.
func TestParseSnapshot(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	exercise(t, m)
	m.Request("registry.test", "blob", "miss")
	m.Request("registry.test", "tag", "revalidated")
	m.Served("registry.test", "blob", "miss", 5000)

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	got, started, err := metrics.ParseSnapshot(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	want, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	want.Cache = nil
	if got != want {
		t.Errorf("ParseSnapshot = %+v\nwant the server's %+v", got, want)
	}
	if got.CacheRequests != 3 || got.HitRatio() != 2.0/3 || got.BytesSaved() != 6000-5 {
		t.Errorf("ParseSnapshot: %v cache requests, hit ratio %v, %v bytes saved; want 3, 2/3, 5995",
			got.CacheRequests, got.HitRatio(), got.BytesSaved())
	}
	if time.Since(started) > time.Hour || time.Until(started) > time.Minute {
		t.Errorf("started %v, want this process's start", started)
	}

	if _, _, err := metrics.ParseSnapshot(strings.NewReader("regproxy_requests_total{ 1\n")); err == nil {
		t.Error("ParseSnapshot of garbage: no error")
	}
}
