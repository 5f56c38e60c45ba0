package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func (m *Metrics) newUpstreamMetrics() {
	m.upstreamDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "regproxy_upstream_request_duration_seconds",
		Help:    "Time from sending a request upstream to its response headers (or its failure), by registry. Redirects (a blob on a CDN) and token requests count apart.",
		Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120},
	}, []string{"registry"})
	m.upstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regproxy_upstream_errors_total",
		Help: "Upstream requests that failed, by registry and reason: transport (no response: DNS, connect, TLS, timeout) or 5xx (a server error answered).",
	}, []string{"registry", "reason"})
	m.upstreamLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regproxy_upstream_rate_limited_total",
		Help: "Upstream requests answered 429 Too Many Requests, by registry. Requests regproxy refuses itself while it backs off are not sent, and not counted.",
	}, []string{"registry"})
	m.upstreamBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regproxy_upstream_bytes_total",
		Help: "Response body bytes read from upstream (registries, their CDNs and token services), by registry.",
	}, []string{"registry"})
}

// Transport wraps next, the RoundTripper that sends requests upstream, to
// time them and count their errors, 429s and body bytes. registryOf names
// the registry a request is on behalf of, from a bounded set (see
// Request); it is called once per request.
func (m *Metrics) Transport(next http.RoundTripper, registryOf func(*http.Request) string) http.RoundTripper {
	return &transport{next: next, m: m, registryOf: registryOf}
}

type transport struct {
	next       http.RoundTripper
	m          *Metrics
	registryOf func(*http.Request) string
}

var _ http.RoundTripper = (*transport)(nil)

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	registry := t.registryOf(req)
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	t.m.upstreamDuration.WithLabelValues(registry).Observe(time.Since(start).Seconds())
	switch {
	case err != nil:
		if !abandoned(req.Context()) {
			t.m.upstreamErrors.WithLabelValues(registry, "transport").Inc()
			t.m.recordUpstream(req, registry, "transport", nil, err)
		}
		return resp, err
	case resp.StatusCode == http.StatusTooManyRequests:
		t.m.upstreamLimited.WithLabelValues(registry).Inc()
		t.m.recordUpstream(req, registry, "429", resp, nil)
	case resp.StatusCode >= 500:
		t.m.upstreamErrors.WithLabelValues(registry, "5xx").Inc()
		t.m.recordUpstream(req, registry, "5xx", resp, nil)
	}
	// A 101's body is the upgraded connection, which must stay an
	// io.ReadWriteCloser for httputil.ReverseProxy.
	if resp.Body != nil && resp.Body != http.NoBody && resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body = &countingBody{ReadCloser: resp.Body, n: t.m.upstreamBytes.WithLabelValues(registry)}
	}
	return resp, nil
}

// abandoned reports whether ctx was cancelled by whoever sent the request
// (a client that went away, a shutdown), which is no fault of upstream. A
// cancellation with a cause of its own (a fill's stall timer) and a
// deadline are upstream's.
func abandoned(ctx context.Context) bool {
	return ctx.Err() != nil && errors.Is(context.Cause(ctx), context.Canceled)
}

// countingBody adds the bytes read from an upstream body to a counter.
type countingBody struct {
	io.ReadCloser
	n prometheus.Counter
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.n.Add(float64(n))
	}
	return n, err
}
