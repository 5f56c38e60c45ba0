package proxy

import (
	"net"
	"net/http"
	"strings"
)

// checkHost enforces one upstream per intercepted connection. The request's
// Host header must name the CONNECT target: the same host name, and the
// same port when Host carries one (no port means 443, the https default).
// regproxy sends every upstream request to the CONNECT target, but an
// upstream that routes by Host (virtual hosting, a CDN in front of several
// registries) would otherwise answer for whatever host the client named,
// and the cache, keyed by the target, would serve that answer to everyone
// who asks the target. A mismatch is refused before anything goes upstream.
func checkHost(r *http.Request) error {
	if sameHost(r.Host, targetOf(r)) {
		return nil
	}
	return &regError{Status: http.StatusBadRequest, Code: "UNSUPPORTED",
		Message: "Host header does not name the CONNECT target"}
}

// sameHost reports whether a Host header value names target ("host:port").
func sameHost(hostHeader, target string) bool {
	th, tp, err := net.SplitHostPort(target)
	if err != nil {
		return false
	}
	h, p, err := net.SplitHostPort(hostHeader)
	if err != nil {
		// No port (or a bare IPv6 literal in brackets): the https default.
		h, p = strings.TrimSuffix(strings.TrimPrefix(hostHeader, "["), "]"), "443"
	}
	return h != "" && strings.EqualFold(h, th) && p == tp
}
