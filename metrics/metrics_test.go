package metrics_test

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regproxy/regproxy/metrics"
)

// fakeCA is a metrics.CA.
type fakeCA struct {
	minted   uint64
	notAfter time.Time
}

func (c fakeCA) Minted() uint64                 { return c.minted }
func (c fakeCA) Certificate() *x509.Certificate { return &x509.Certificate{NotAfter: c.notAfter} }

// roundTripper answers every request with status and body, or err.
type roundTripper struct {
	status int
	body   string
	err    error
}

func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	if rt.err != nil {
		return nil, rt.err
	}
	return &http.Response{StatusCode: rt.status, Body: io.NopCloser(strings.NewReader(rt.body)), Request: req}, nil
}

// upstream sends one GET through m's Transport over rt, reading the body.
func upstream(t *testing.T, m *metrics.Metrics, rt http.RoundTripper, registry string) {
	t.Helper()
	tr := m.Transport(rt, func(*http.Request) string { return registry })
	req := httptest.NewRequest("GET", "https://"+registry+"/v2/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

func stats() metrics.CacheStats {
	return metrics.CacheStats{
		Blobs: metrics.KindStats{Entries: 3, Bytes: 3000}, Manifests: metrics.KindStats{Entries: 2, Bytes: 200},
		Tags: metrics.KindStats{Entries: 1, Bytes: 10}, MaxBytes: 1 << 20,
		FreeBytes: 5 << 20, FilesystemBytes: 10 << 20, MinFreeBytes: -1,
		Evicted: metrics.KindStats{Entries: 4, Bytes: 4000}, Loaded: true,
	}
}

// exercise feeds every hook once, so that every metric has a series.
func exercise(t *testing.T, m *metrics.Metrics) {
	t.Helper()
	m.Request("registry.test", "blob", "hit")
	m.Served("registry.test", "blob", "hit", 1000)
	m.FillStarted()
	m.FillEnded(time.Second, 2, "refused")
	m.InitFillCauses([]string{"refused", "upstream"})
	upstream(t, m, roundTripper{status: 200, body: "12345"}, "registry.test")
	upstream(t, m, roundTripper{status: 429}, "registry.test")
	upstream(t, m, roundTripper{status: 503}, "registry.test")
	upstream(t, m, roundTripper{err: errors.New("connection refused")}, "registry.test")
	m.SetCA(fakeCA{minted: 7, notAfter: time.Unix(2000000000, 0)})
	m.SetCacheStats(stats)
}

func TestMetricValues(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	exercise(t, m)
	want := `
# HELP regproxy_cache_bytes Bytes of committed cache entries, by kind (blob, manifest, tag, other).
# TYPE regproxy_cache_bytes gauge
regproxy_cache_bytes{kind="blob"} 3000
regproxy_cache_bytes{kind="manifest"} 200
regproxy_cache_bytes{kind="other"} 0
regproxy_cache_bytes{kind="tag"} 10
# HELP regproxy_cache_max_bytes The cache's size cap (--cache-max-size); absent without one.
# TYPE regproxy_cache_max_bytes gauge
regproxy_cache_max_bytes 1.048576e+06
# HELP regproxy_cache_evictions_total Cache entries evicted.
# TYPE regproxy_cache_evictions_total counter
regproxy_cache_evictions_total 4
# HELP regproxy_ca_expiry_timestamp_seconds When the CA certificate expires (its NotAfter), in seconds since the Unix epoch.
# TYPE regproxy_ca_expiry_timestamp_seconds gauge
regproxy_ca_expiry_timestamp_seconds 2e+09
# HELP regproxy_leaf_certificates_minted_total Leaf certificates the CA signed for intercepted hosts (cached leaves are reused, not counted).
# TYPE regproxy_leaf_certificates_minted_total counter
regproxy_leaf_certificates_minted_total 7
# HELP regproxy_fills_in_flight Blob fills running now: downloads into the cache that clients read while they grow.
# TYPE regproxy_fills_in_flight gauge
regproxy_fills_in_flight 0
`
	names := []string{"regproxy_cache_bytes", "regproxy_cache_max_bytes", "regproxy_cache_evictions_total",
		"regproxy_ca_expiry_timestamp_seconds", "regproxy_leaf_certificates_minted_total", "regproxy_fills_in_flight"}
	if err := testutil.GatherAndCompare(m.Gatherer(), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"regproxy_upstream_bytes_total", []string{"registry", "registry.test"}, 5},
		{"regproxy_upstream_rate_limited_total", []string{"registry", "registry.test"}, 1},
		{"regproxy_upstream_errors_total", []string{"registry", "registry.test", "reason", "5xx"}, 1},
		{"regproxy_upstream_errors_total", []string{"registry", "registry.test", "reason", "transport"}, 1},
	} {
		if got := counterValue(t, m, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %v; want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}

// counterValue reads the series of a counter family whose labels include
// the given pairs ("registry", "registry.test", …).
func counterValue(t *testing.T, m *metrics.Metrics, name string, pairs ...string) float64 {
	t.Helper()
	families, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range s.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			ok := true
			for i := 0; i+1 < len(pairs); i += 2 {
				ok = ok && have[pairs[i]] == pairs[i+1]
			}
			if ok {
				sum += s.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// TestLabelsBounded: a kind or outcome outside the fixed lists, and a
// cancelled request, add no series of their own.
func TestLabelsBounded(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	m.Request("registry.test", "blob", "HIT")
	m.Request("registry.test", "library/alpine", "hit")
	if got := counterValue(t, m, "regproxy_requests_total", "kind", "other", "outcome", "hit"); got != 1 {
		t.Errorf("unknown kind counted %v times as other; want 1", got)
	}
	if got := counterValue(t, m, "regproxy_requests_total", "kind", "blob", "outcome", "other"); got != 1 {
		t.Errorf("unknown outcome counted %v times as other; want 1", got)
	}
	if n, err := testutil.GatherAndCount(m.Gatherer(), "regproxy_requests_total"); err != nil || n != 2 {
		t.Errorf("%d request series, %v; want 2", n, err)
	}
}

// TestTransportSkipsAbandonedRequests: a request its sender cancelled is
// no upstream error.
func TestTransportSkipsAbandonedRequests(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	tr := m.Transport(roundTripper{err: errors.New("context canceled")}, func(*http.Request) string { return "r" })
	req := httptest.NewRequest("GET", "https://r/v2/", nil)
	ctx, cancel := context.WithCancel(req.Context())
	cancel()
	tr.RoundTrip(req.WithContext(ctx))
	if got := counterValue(t, m, "regproxy_upstream_errors_total", "reason", "transport"); got != 0 {
		t.Errorf("cancelled request counted as %v upstream errors; want 0", got)
	}
}

func TestSnapshot(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	before, err := m.Snapshot()
	if err != nil || before.Cache != nil {
		t.Fatalf("Snapshot without a cache hook: cache %v, err %v", before.Cache, err)
	}
	for _, outcome := range []string{"hit", "hit", "joined", "miss", "pass", "tunnel"} {
		m.Request("registry.test", "blob", outcome)
	}
	m.Served("registry.test", "blob", "hit", 3000)
	upstream(t, m, roundTripper{status: 200, body: strings.Repeat("x", 1000)}, "registry.test")
	m.FillStarted()
	m.SetCacheStats(stats)
	s, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	d := s.Since(before)
	if d.Requests != 6 || d.CacheRequests != 4 || d.HitRatio() != 0.75 || d.BytesSaved() != 2000 || d.FillsInFlight != 1 {
		t.Errorf("Snapshot: %d requests, %d cacheable, hit ratio %v, saved %v, fills %v; want 6, 4, 0.75, 2000, 1",
			int(d.Requests), int(d.CacheRequests), d.HitRatio(), d.BytesSaved(), d.FillsInFlight)
	}
	if d.Cache == nil || d.Cache.Total().Bytes != 3210 {
		t.Errorf("Snapshot cache: %+v; want the hook's 3210 bytes", d.Cache)
	}
}

// TestHandler serves the text format.
func TestHandler(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	m.Request("registry.test", "tag", "stale")
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if body := rec.Body.String(); rec.Code != 200 ||
		!strings.Contains(body, `regproxy_requests_total{kind="tag",outcome="stale",registry="registry.test"} 1`) {
		t.Fatalf("GET /metrics: %d\n%s", rec.Code, body)
	}
}
