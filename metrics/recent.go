package metrics

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RecentUpstreamMax is how many upstream failures RecentUpstream keeps.
const RecentUpstreamMax = 32

// UpstreamEvent is one upstream request that regproxy_upstream_errors_total
// or regproxy_upstream_rate_limited_total counted, for the status page. It
// names no repository, tag, digest or user, like the metrics: only the
// registry label, the host asked, the kind of request and the answer.
type UpstreamEvent struct {
	Time     time.Time
	Registry string // the registry label
	Host     string // the host the request went to (a registry, its CDN, its token service)
	// Kind is what was asked: blob, manifest, ping (/v2/), token or other.
	Kind string
	// Reason is the counter's: "429", "5xx" or "transport".
	Reason string
	// Status is the answer's status code; 0 when there was none.
	Status int
	// Detail is the Retry-After of a 429, the status text of a 5xx, and a
	// class of error (timeout, DNS, refused, TLS, ...) for no answer: never
	// the error itself, whose text may carry a URL.
	Detail string
}

// recentUpstream is a ring of the last RecentUpstreamMax events.
type recentUpstream struct {
	mu     sync.Mutex // protects the fields below
	events [RecentUpstreamMax]UpstreamEvent
	next   int // where the next event goes
	n      int // events held
}

func (r *recentUpstream) add(e UpstreamEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events[r.next] = e
	r.next = (r.next + 1) % len(r.events)
	r.n = min(r.n+1, len(r.events))
}

// RecentUpstream returns the last upstream errors and 429s, the newest
// first.
func (m *Metrics) RecentUpstream() []UpstreamEvent {
	r := &m.recent
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]UpstreamEvent, 0, r.n)
	for i := 1; i <= r.n; i++ {
		out = append(out, r.events[(r.next-i+len(r.events))%len(r.events)])
	}
	return out
}

// recordUpstream keeps req's failure: resp, or err when there was no
// answer. reason is the counter it was counted in.
func (m *Metrics) recordUpstream(req *http.Request, registry, reason string, resp *http.Response, err error) {
	e := UpstreamEvent{Time: time.Now(), Registry: registry, Host: req.URL.Host, Kind: requestKind(req), Reason: reason}
	switch {
	case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
		e.Status, e.Detail = resp.StatusCode, retryAfter(resp.Header.Get("Retry-After"))
	case resp != nil:
		e.Status, e.Detail = resp.StatusCode, http.StatusText(resp.StatusCode)
	default:
		e.Detail = errorClass(req.Context(), err)
	}
	m.recent.add(e)
}

// requestKind names what an upstream request asks for from its path
// alone: the distribution API's /v2/<name>/blobs/ and /manifests/, the
// /v2/ ping, a token request (it carries a service or scope), or other.
func requestKind(req *http.Request) string {
	p := req.URL.Path
	switch {
	case strings.Contains(p, "/blobs/"):
		return "blob"
	case strings.Contains(p, "/manifests/"):
		return "manifest"
	case p == "/v2/" || p == "/v2":
		return "ping"
	case req.URL.Query().Has("service") || req.URL.Query().Has("scope"):
		return "token"
	}
	return "other"
}

// retryAfter is a Retry-After value as the page shows it: delay-seconds
// or an HTTP-date (RFC 9110, section 10.2.3).
func retryAfter(v string) string {
	switch {
	case v == "":
		return "no Retry-After"
	case len(v) > 40:
		return "Retry-After unreadable"
	}
	if strings.Trim(v, "0123456789") == "" {
		return "retry after " + v + "s"
	}
	if _, err := http.ParseTime(v); err == nil {
		return "retry after " + v
	}
	return "Retry-After unreadable"
}

// errorClass names the kind of failure of a request that got no answer.
func errorClass(ctx context.Context, err error) string {
	var dns *net.DNSError
	var netErr net.Error
	var certErr *tls.CertificateVerificationError
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	switch {
	case errors.As(err, &dns):
		return "DNS lookup failed"
	case errors.As(err, &certErr), errors.As(err, &unknownAuthority), errors.As(err, &hostname):
		return "TLS certificate not trusted"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case ctx.Err() != nil:
		return abortCause(ctx)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	case strings.Contains(err.Error(), "tls:"):
		return "TLS handshake failed"
	}
	return "no answer"
}

// abortCause is why ctx ended, such as the fixed sentence of a fill's
// stall timer; a cause that names a URL, or runs long, is left out.
func abortCause(ctx context.Context) string {
	c := context.Cause(ctx).Error()
	if strings.Contains(c, "://") || len(c) > 80 {
		return "aborted"
	}
	return "aborted: " + c
}
