// Package metrics owns regproxy's Prometheus metrics: every regproxy_
// series, the registry they are gathered from, and the handler that serves
// them. The packages that do the work import no Prometheus; they report
// through small hooks:
//   - proxy calls Request and Served from the one deferred function that
//     also writes each access-log line, and wraps its upstream transport in
//     Transport;
//   - fill reports fills through its Observer interface, which Metrics
//     implements (FillStarted, FillEnded);
//   - the CA (SetCA) and the cache's eviction index (SetCacheStats) are read
//     at each scrape.
//
// Label values come from bounded sets only. Kinds and outcomes are fixed
// lists here (anything else counts as "other"); registries are the
// allow-list entries, which callers pass in, with "other" for every other
// host. No repository, tag, digest or user ever becomes a label.
//
// The status page reads the same series (Status), and two things beside
// them that are no metric: the last upstream failures (RecentUpstream)
// and, only where the operator enabled it, a bounded tally of bytes served
// by repository (TrackRepositories).
//
// The package does not decide outcomes or which registry a request
// belongs to (proxy does), and it imports no other regproxy package.
package metrics

import (
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Kinds are the values of the kind label of request metrics: a blob, a
// manifest by digest, a manifest by tag, anything else.
var Kinds = []string{"blob", "manifest", "tag", "other"}

// Outcomes are the values of the outcome label of regproxy_requests_total:
// the access log's outcomes, in lower case, with MISS-JOINED as "joined"
// and a response cut partway (-ABORTED) as "error".
var Outcomes = []string{"hit", "miss", "joined", "stale", "revalidated", "pass", "tunnel",
	"denied", "error", "offline", "local"}

// CacheOutcomes are the outcomes of requests the cache could have answered:
// the hit ratio is the share of them that did not need an upstream fetch
// of their own (all but "miss").
var CacheOutcomes = []string{"hit", "miss", "joined", "stale", "revalidated"}

// Other is the label value of a registry that is not on the allow-list,
// and of a kind or outcome outside Kinds and Outcomes.
const Other = "other"

// Metrics holds every regproxy_ metric. Its methods are safe for
// concurrent use.
type Metrics struct {
	reg     *prometheus.Registry
	handler http.Handler // serves reg

	requests *prometheus.CounterVec // registry, kind, outcome
	served   *prometheus.CounterVec // registry, kind, outcome

	fillsInFlight prometheus.Gauge
	fillJoiners   prometheus.Histogram
	fillDuration  prometheus.Histogram
	fillFailures  *prometheus.CounterVec // cause

	upstreamDuration *prometheus.HistogramVec // registry
	upstreamErrors   *prometheus.CounterVec   // registry, reason
	upstreamLimited  *prometheus.CounterVec   // registry
	upstreamBytes    *prometheus.CounterVec   // registry

	ca    atomic.Pointer[CA]                // nil until SetCA
	cache atomic.Pointer[func() CacheStats] // nil until SetCacheStats

	// For the status page, beside the series: the last upstream failures
	// (recent.go) and, once enabled, bytes by repository (repos.go).
	recent    recentUpstream
	repoTally repoTally
}

// New returns Metrics on a registry of their own, with Go runtime and
// process metrics alongside.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regproxy_requests_total",
		Help: "Requests answered, by registry (allow-list entry, or other), kind (blob, manifest, tag, other) and outcome (as in the access log). CONNECT tunnels count once, when they end.",
	}, []string{"registry", "kind", "outcome"})
	m.served = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regproxy_served_bytes_total",
		Help: "Response body bytes sent to clients of intercepted registries, by registry, kind and outcome. Served from the cache: outcome hit, joined, stale or revalidated. Bytes saved: this minus regproxy_upstream_bytes_total.",
	}, []string{"registry", "kind", "outcome"})
	m.newFillMetrics()
	m.newUpstreamMetrics()
	m.reg.MustRegister(m.requests, m.served,
		m.fillsInFlight, m.fillJoiners, m.fillDuration, m.fillFailures,
		m.upstreamDuration, m.upstreamErrors, m.upstreamLimited, m.upstreamBytes,
		hooks{m},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) newFillMetrics() {
	m.fillsInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "regproxy_fills_in_flight",
		Help: "Blob fills running now: downloads into the cache that clients read while they grow.",
	})
	m.fillJoiners = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "regproxy_fill_joiners",
		Help:    "Per ended fill, how many requests joined it after another request started it.",
		Buckets: []float64{0, 1, 2, 4, 8, 16, 32, 64, 128},
	})
	m.fillDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "regproxy_fill_duration_seconds",
		Help:    "How long blob fills ran, from their start to their commit or failure.",
		Buckets: []float64{0.05, 0.25, 1, 5, 15, 60, 300, 900, 3600},
	})
	m.fillFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regproxy_fill_failures_total",
		Help: "Blob fills that ended without the verified blob, by cause (refused, upstream, stalled, timeout, digest_mismatch, store, no_readers, shutdown; see the README).",
	}, []string{"cause"})
}

// Handler serves the metrics in the Prometheus text format (or
// OpenMetrics, or compressed, as the scraper asks).
func (m *Metrics) Handler() http.Handler { return m.handler }

// Gatherer is the registry itself, for tests and tools.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// Request counts one request as its access-log line describes it. registry
// must come from a bounded set (proxy passes the allow-list entry the host
// matches, or Other); a kind or outcome outside Kinds and Outcomes counts
// as Other.
func (m *Metrics) Request(registry, kind, outcome string) {
	m.requests.WithLabelValues(registry, oneOf(kind, Kinds), oneOf(outcome, Outcomes)).Inc()
}

// Served counts n body bytes sent to a client of an intercepted registry,
// with Request's labels.
func (m *Metrics) Served(registry, kind, outcome string, n int64) {
	if n > 0 {
		m.served.WithLabelValues(registry, oneOf(kind, Kinds), oneOf(outcome, Outcomes)).Add(float64(n))
	}
}

// oneOf returns v if it is in set, else Other: label values stay bounded
// whatever a caller passes.
func oneOf(v string, set []string) string {
	if slices.Contains(set, v) {
		return v
	}
	return Other
}

// FillStarted implements fill.Observer.
func (m *Metrics) FillStarted() { m.fillsInFlight.Inc() }

// FillEnded implements fill.Observer. cause is "" for a fill that
// delivered its blob; the caller's causes form a bounded set.
func (m *Metrics) FillEnded(d time.Duration, joiners int, cause string) {
	m.fillsInFlight.Dec()
	m.fillDuration.Observe(d.Seconds())
	m.fillJoiners.Observe(float64(joiners))
	if cause != "" {
		m.fillFailures.WithLabelValues(cause).Inc()
	}
}

// InitFillCauses makes every cause a series at zero, so that rate() sees
// a cause's first failure.
func (m *Metrics) InitFillCauses(causes []string) {
	for _, c := range causes {
		m.fillFailures.WithLabelValues(c)
	}
}
