package proxy

import (
	"net"
	"net/http"
	"slices"
	"strings"

	"github.com/regproxy/regproxy/fill"
	"github.com/regproxy/regproxy/internal/dockerhub"
	"github.com/regproxy/regproxy/metrics"
)

// This file turns what the proxy knows of a request into the labels of
// package metrics. Labels stay bounded: a registry label is an allow-list
// entry or "other", never a host a client or an upstream chose, and
// repositories, tags and users never become labels.

// Metrics returns the metrics the proxy reports to: Config.Metrics, or its
// own.
func (p *Proxy) Metrics() *metrics.Metrics { return p.metrics }

// initMetrics makes the metrics read the CA (leaves minted, expiry) if it
// can tell them, and starts every fill failure cause at zero.
func (p *Proxy) initMetrics(c CertSource) {
	if mc, ok := c.(metrics.CA); ok {
		p.metrics.SetCA(mc)
	}
	p.metrics.InitFillCauses(fill.Causes)
}

// count records an access-log entry in the metrics. logEntry, which every
// request's one deferred function ends in, calls it.
func (p *Proxy) count(e entry) {
	registry := p.allow.label(e.host)
	kind, outcome := metricKind(e.kind, e.ref), metricOutcome(e.outcome)
	p.metrics.Request(registry, kind, outcome)
	if e.kind != "" { // a request to an intercepted registry, not a tunnel or a page of the proxy port
		p.metrics.Served(registry, kind, outcome, e.bytes)
		p.tallyRepo(e, registry, outcome)
	}
}

// label is the registry label of target ("host:port", or a bare host):
// the allow-list entry that intercepts it, with every Docker Hub host as
// "docker.io" when that entry is listed, else metrics.Other.
func (a *allowList) label(target string) string {
	t := strings.ToLower(target)
	host, _, err := net.SplitHostPort(t)
	if err != nil {
		host = t
	}
	switch {
	case a.exact[t]:
		return t
	case a.anyPort[host] && a.anyPort[dockerhub.Name] && slices.Contains(dockerhub.Hosts(), host):
		return dockerhub.Name
	case a.anyPort[host]:
		return host
	}
	return metrics.Other
}

// upstreamRegistry is the registry label of a request regproxy sends
// upstream: the intercepted target it is made for, whichever host it goes
// to (a token service, a CDN that a blob redirects to).
func (p *Proxy) upstreamRegistry(req *http.Request) string {
	if t := targetOf(req); t != "" {
		return p.allow.label(t)
	}
	return p.allow.label(req.URL.Host)
}

// metricKind is the kind label of a request that describePath described:
// a manifest by tag is "tag", one by digest "manifest".
func metricKind(kind, ref string) string {
	switch {
	case kind == logBlob:
		return "blob"
	case kind == logManifest && ref != "" && !strings.Contains(ref, ":"):
		return "tag"
	case kind == logManifest:
		return "manifest"
	}
	return metrics.Other
}

// metricOutcomes maps the access log's outcomes to metric labels.
var metricOutcomes = map[string]string{
	outcomeHit: "hit", outcomeMiss: "miss", outcomeJoin: "joined", outcomeStale: "stale",
	outcomeRevalidated: "revalidated", outcomePass: "pass", outcomeOffline: "offline",
	outcomeError: "error", outcomeLocal: "local", outcomeTunnel: "tunnel", outcomeDenied: "denied",
}

// metricOutcome is the outcome label of an access-log outcome. A response
// cut partway (-ABORTED) failed its client: "error".
func metricOutcome(outcome string) string {
	if strings.HasSuffix(outcome, abortedSuffix) {
		return "error"
	}
	if o, ok := metricOutcomes[outcome]; ok {
		return o
	}
	return metrics.Other
}
