package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// sample is one series of a /metrics scrape.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// scrape is what GET /metrics on the proxy port answered.
type scrape struct {
	text    string
	samples []sample
}

// scrapeMetrics fetches /metrics from the proxy port, as Prometheus
// does: plain HTTP, no proxy, no credentials.
func (e *env) scrapeMetrics() scrape {
	e.t.Helper()
	resp, err := http.Get(e.proxyURL.String() + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		e.t.Fatalf("GET /metrics: %d, %v", resp.StatusCode, err)
	}
	s := scrape{text: string(body)}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if line := sc.Text(); line != "" && !strings.HasPrefix(line, "#") {
			s.samples = append(s.samples, parseSample(e.t, line))
		}
	}
	return s
}

// parseSample reads `name{a="x",b="y"} value` (values without commas or
// quotes, as regproxy's labels are).
func parseSample(t testing.TB, line string) sample {
	series, value, ok := strings.Cut(line, " ")
	v, err := strconv.ParseFloat(value, 64)
	if !ok || err != nil {
		t.Fatalf("bad metrics line %q", line)
	}
	s := sample{labels: map[string]string{}, value: v}
	name, labels, _ := strings.Cut(strings.TrimSuffix(series, "}"), "{")
	s.name = name
	for _, kv := range strings.Split(labels, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			s.labels[k] = strings.Trim(v, `"`)
		}
	}
	return s
}

// get sums the series of name whose labels include the given pairs
// ("registry", "registry.test", …).
func (s scrape) get(name string, labels ...string) float64 {
	var sum float64
	for _, m := range s.samples {
		if m.name == name && matches(m.labels, labels) {
			sum += m.value
		}
	}
	return sum
}

func matches(have map[string]string, want []string) bool {
	for i := 0; i+1 < len(want); i += 2 {
		if have[want[i]] != want[i+1] {
			return false
		}
	}
	return true
}

// labelValues returns the values label takes in the series of name.
func (s scrape) labelValues(name, label string) map[string]bool {
	vals := map[string]bool{}
	for _, m := range s.samples {
		if m.name == name {
			vals[m.labels[label]] = true
		}
	}
	return vals
}

// imageBlob pushes an image with one layer of n random bytes as repo:tag
// and returns the layer's digest and bytes.
func imageBlob(t *testing.T, e *env, repo, tag string, n int64) (v1.Hash, []byte) {
	t.Helper()
	img := e.up.RandomImage(t, 1, n)
	e.up.Push(t, repo, tag, img)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return d, b
}

// waitFillsIdle waits until no fill runs: a client may have its last
// byte before the fill has committed.
func waitFillsIdle(t *testing.T, e *env) scrape {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		s := e.scrapeMetrics()
		if s.get("regproxy_fills_in_flight") == 0 || time.Now().After(deadline) {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMetricsAfterScriptedPulls scripts hits, misses, a joined fill, a
// stale tag, a 429 and a refused blob, and reads every figure back from
// /metrics on the proxy port.
func TestMetricsAfterScriptedPulls(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	other := e.secondRegistry(false) // tunnelled, not intercepted
	c := e.client()
	const repo = "metrics/app"
	d1, blob1 := imageBlob(t, e, repo, "v1", 100<<10)
	d2, blob2 := imageBlob(t, e, repo, "v2", 300<<10)
	e.up.Push(t, repo, "limited", e.up.RandomImage(t, 1, 100))
	blobPath := func(d v1.Hash) string { return "/v2/" + repo + "/blobs/" + d.String() }

	// The tag: a miss, then a hit.
	_, manifest := e.get(c, "GET", "/v2/"+repo+"/manifests/v1")
	e.get(c, "GET", "/v2/"+repo+"/manifests/v1")
	// A blob: a miss, then (once the fill has committed) a hit.
	e.get(c, "GET", blobPath(d1))
	waitFillsIdle(t, e)
	e.get(c, "GET", blobPath(d1))
	// A second blob, trickled upstream: one request starts the fill, the
	// next joins it.
	e.up.SetFault(slowBlob(blob2, 20, 20*time.Millisecond))
	leader := startSlowFill(t, e, blobPath(d2))
	if got := e.scrapeMetrics().get("regproxy_fills_in_flight"); got != 1 {
		t.Errorf("regproxy_fills_in_flight = %v while a blob trickles in; want 1", got)
	}
	if resp, got := e.get(c, "GET", blobPath(d2)); resp.StatusCode != 200 || !bytes.Equal(got, blob2) {
		t.Fatalf("joined blob: %d, %d bytes", resp.StatusCode, len(got))
	}
	if got, err := io.ReadAll(leader.Body); err != nil || !bytes.Equal(got, blob2) {
		t.Fatalf("leading blob: %d bytes, %v", len(got), err)
	}
	// The tag expires and upstream fails: the stale copy is served.
	e.clock.Advance(e.ttl + time.Second)
	e.up.SetFault(testupstream.FailWith(http.StatusServiceUnavailable, "HEAD manifest", "GET manifest"))
	if resp, got := e.get(c, "GET", "/v2/"+repo+"/manifests/v1"); resp.StatusCode != 200 || !bytes.Equal(got, manifest) {
		t.Fatalf("stale tag: %d", resp.StatusCode)
	}
	// Upstream rate-limits an uncached tag; the 429 passes through.
	e.up.SetFault(testupstream.FailWith(http.StatusTooManyRequests, "GET manifest"))
	if resp, _ := e.get(c, "GET", "/v2/"+repo+"/manifests/limited"); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("rate-limited tag: %d; want upstream's 429", resp.StatusCode)
	}
	e.up.SetFault(nil)
	// A blob upstream does not have: the fill is refused.
	missing := "/v2/" + repo + "/blobs/sha256:" + strings.Repeat("0", 64)
	if resp, _ := e.get(c, "GET", missing); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing blob: %d; want 404", resp.StatusCode)
	}
	// A tunnel to a host that is not intercepted.
	tunnelTo(t, e, other)

	s := waitFillsIdle(t, e)
	reg := []string{"registry", "registry.test"}
	for _, tc := range []struct {
		name, kind, outcome string
		want                float64
	}{
		{"tag miss", "tag", "miss", 1},
		{"tag hit", "tag", "hit", 1},
		{"tag stale", "tag", "stale", 1},
		{"tag 429 passed", "tag", "pass", 1},
		{"blob misses", "blob", "miss", 2},
		{"blob hit", "blob", "hit", 1},
		{"blob joined", "blob", "joined", 1},
		{"blob refused, passed", "blob", "pass", 1},
	} {
		if got := s.get("regproxy_requests_total", append(reg, "kind", tc.kind, "outcome", tc.outcome)...); got != tc.want {
			t.Errorf("%s: regproxy_requests_total{kind=%q,outcome=%q} = %v; want %v", tc.name, tc.kind, tc.outcome, got, tc.want)
		}
	}
	if got := s.get("regproxy_requests_total", "registry", "other", "kind", "other", "outcome", "tunnel"); got != 1 {
		t.Errorf(`tunnels: regproxy_requests_total{registry="other",outcome="tunnel"} = %v; want 1`, got)
	}
	checkBytes(t, s, blob1, blob2, manifest)
	checkFills(t, s)
	checkUpstream(t, e, s)
	checkCA(t, e, s)
	// Bounded labels: only the allow-list entry and "other" are
	// registries, and no repository reaches the metrics.
	for v := range s.labelValues("regproxy_requests_total", "registry") {
		if v != "registry.test" && v != "other" {
			t.Errorf("registry label %q; want only registry.test and other", v)
		}
	}
	if strings.Contains(s.text, repo) || strings.Contains(s.text, "registry2.test") {
		t.Errorf("/metrics names a repository or a tunnelled host:\n%s", s.text)
	}
}

// tunnelTo opens a CONNECT tunnel through the proxy to other and pings it.
func tunnelTo(t *testing.T, e *env, other *testupstream.Upstream) {
	t.Helper()
	tr := &http.Transport{Proxy: http.ProxyURL(e.proxyURL), TLSClientConfig: tlsConfig(other.CertPool())}
	resp, err := (&http.Client{Transport: tr}).Get("https://" + other.Host + "/v2/")
	if err != nil {
		t.Fatalf("tunnel: %v", err)
	}
	resp.Body.Close()
	tr.CloseIdleConnections() // the tunnel ends, and is logged and counted
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if e.scrapeMetrics().get("regproxy_requests_total", "outcome", "tunnel") == 1 {
			return
		}
	}
}

func checkBytes(t *testing.T, s scrape, blob1, blob2, manifest []byte) {
	t.Helper()
	reg := []string{"registry", "registry.test"}
	for _, tc := range []struct {
		kind, outcome string
		want          int
	}{
		{"blob", "hit", len(blob1)},
		{"blob", "joined", len(blob2)},
		{"blob", "miss", len(blob1) + len(blob2)},
		{"tag", "hit", len(manifest)},
		{"tag", "stale", len(manifest)},
	} {
		if got := s.get("regproxy_served_bytes_total", append(reg, "kind", tc.kind, "outcome", tc.outcome)...); got != float64(tc.want) {
			t.Errorf("regproxy_served_bytes_total{kind=%q,outcome=%q} = %v; want %d", tc.kind, tc.outcome, got, tc.want)
		}
	}
	if got := s.get("regproxy_served_bytes_total", "outcome", "tunnel"); got != 0 {
		t.Errorf("tunnel bytes counted as served: %v", got)
	}
	// Upstream sent each blob once and the manifest once, plus two
	// small error bodies (the 429 and the 404).
	fetched := s.get("regproxy_upstream_bytes_total", reg...)
	if want := float64(len(blob1) + len(blob2) + len(manifest)); fetched < want || fetched > want+1024 {
		t.Errorf("regproxy_upstream_bytes_total = %v; want %v and the error bodies", fetched, want)
	}
}

func checkFills(t *testing.T, s scrape) {
	t.Helper()
	for _, tc := range []struct {
		name string
		want float64
	}{
		{"regproxy_fills_in_flight", 0},
		{"regproxy_fill_duration_seconds_count", 3}, // blob1, blob2, the refused one
		{"regproxy_fill_joiners_count", 3},
		{"regproxy_fill_joiners_sum", 1},
	} {
		if got := s.get(tc.name); got != tc.want {
			t.Errorf("%s = %v; want %v", tc.name, got, tc.want)
		}
	}
	if got := s.get("regproxy_fill_failures_total", "cause", "refused"); got != 1 {
		t.Errorf(`regproxy_fill_failures_total{cause="refused"} = %v; want 1`, got)
	}
	if got := s.get("regproxy_fill_failures_total"); got != 1 {
		t.Errorf("regproxy_fill_failures_total = %v over all causes; want 1", got)
	}
	if n := len(s.labelValues("regproxy_fill_failures_total", "cause")); n < 8 {
		t.Errorf("%d fill failure causes exported; want every cause, at zero until it happens", n)
	}
}

func checkUpstream(t *testing.T, e *env, s scrape) {
	t.Helper()
	reg := []string{"registry", "registry.test"}
	if got := s.get("regproxy_upstream_rate_limited_total", reg...); got != 1 {
		t.Errorf("regproxy_upstream_rate_limited_total = %v; want 1", got)
	}
	if got := s.get("regproxy_upstream_errors_total", append(reg, "reason", "5xx")...); got != 1 {
		t.Errorf(`regproxy_upstream_errors_total{reason="5xx"} = %v; want 1 (the failed revalidation)`, got)
	}
	if got := s.get("regproxy_upstream_errors_total", "reason", "transport"); got != 0 {
		t.Errorf(`regproxy_upstream_errors_total{reason="transport"} = %v; want 0`, got)
	}
	if got, want := s.get("regproxy_upstream_request_duration_seconds_count", reg...), float64(e.up.Total()); got != want {
		t.Errorf("regproxy_upstream_request_duration_seconds_count = %v; upstream saw %v requests", got, want)
	}
}

func checkCA(t *testing.T, e *env, s scrape) {
	t.Helper()
	block, _ := pem.Decode(e.caPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.get("regproxy_ca_expiry_timestamp_seconds"); got != float64(cert.NotAfter.Unix()) {
		t.Errorf("regproxy_ca_expiry_timestamp_seconds = %v; want %d", got, cert.NotAfter.Unix())
	}
	if got := s.get("regproxy_leaf_certificates_minted_total"); got != 1 {
		t.Errorf("regproxy_leaf_certificates_minted_total = %v; want 1 (registry.test)", got)
	}
}

// TestMetricsUpstreamByRegistry: regproxy's requests to a token service
// and to the CDN a blob redirects to count under the registry they serve,
// so that a registry's upstream figures are whole; a client's own token
// requests count under the token host it intercepts.
func TestMetricsUpstreamByRegistry(t *testing.T) {
	t.Parallel()
	e := newHubEnv(t, nil)
	img := e.up.RandomImage(t, 2, 10000)
	e.up.Push(t, "private/app", "v1", img)
	if err := e.pullAs(&authn.Basic{Username: testupstream.HubUser, Password: testupstream.HubPassword}, "private/app", "v1"); err != nil {
		t.Fatal(err)
	}
	if e.up.CountHost("cdn.test") == 0 {
		t.Fatal("no blob went through the CDN; the test proves nothing")
	}
	s := waitFillsIdle(t, e)
	regs := s.labelValues("regproxy_upstream_request_duration_seconds_count", "registry")
	if regs["cdn.test"] || !regs["registry.test"] {
		t.Errorf("upstream registries %v; want registry.test (and auth.test), never cdn.test", regs)
	}
	if got, want := s.get("regproxy_upstream_request_duration_seconds_count"), float64(e.up.Total()); got != want {
		t.Errorf("upstream requests counted %v; upstream saw %v", got, want)
	}
	layers, _ := img.Layers()
	var size int64
	for _, l := range layers {
		n, _ := l.Size()
		size += n
	}
	if got := s.get("regproxy_upstream_bytes_total", "registry", "registry.test"); got < float64(size) {
		t.Errorf(`regproxy_upstream_bytes_total{registry="registry.test"} = %v; want at least the layers' %d bytes`, got, size)
	}
}

// TestMetricsOpenUnderHtpasswd: Prometheus scrapes without proxy
// credentials, like /healthz.
func TestMetricsOpenUnderHtpasswd(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.stop()
	e.users = testUsers(t)
	e.start()
	e.scrapeMetrics()
	s := e.scrapeMetrics()
	if got := s.get("regproxy_requests_total", "registry", "other", "outcome", "local"); got != 1 {
		t.Fatalf("/metrics under --htpasswd: the first scrape counted %v times; want 1:\n%s", got, s.text)
	}
}
