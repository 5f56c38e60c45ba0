package proxy

import (
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
)

// newPassthrough forwards uncached requests (the /v2/ ping, token
// requests, tag lists, pushes) to the intercepted target unchanged, with
// the client's own Authorization. Redirects go back to the client.
func (p *Proxy) newPassthrough() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = targetOf(pr.In)
			// The client's Host header, which checkHost has verified names
			// the target: what the client would have sent upstream directly.
			pr.Out.Host = pr.In.Host
		},
		Transport:      p.upstream,
		ModifyResponse: p.modifyPassed,
		FlushInterval:  -1, // stream as it comes: uploads, large tag lists
		ErrorLog:       nil,
		ErrorHandler:   p.passError,
	}
}

// modifyPassed looks at each passed-through answer before it is relayed:
// an unhealthy answer to the ping becomes an error for passError, and a
// push that upstream accepted is noted.
func (p *Proxy) modifyPassed(resp *http.Response) error {
	if isPing(resp.Request) && unhealthy(resp.StatusCode) {
		// A registry outage answers 503 to everything, the ping included;
		// clients ping before they pull, so relaying it would fail even
		// pulls that the cache could serve.
		resp.Body.Close()
		return &unhealthyError{status: resp.Status}
	}
	return p.notePush(resp)
}

// unhealthyError is an upstream answer that passError treats as an
// outage.
type unhealthyError struct{ status string }

func (e *unhealthyError) Error() string { return "upstream answered " + e.status }

// isPing reports whether r is the API version check, GET or HEAD /v2/.
func isPing(r *http.Request) bool {
	return r.URL.Path == "/v2/" && (r.Method == http.MethodGet || r.Method == http.MethodHead)
}

// notePush keeps the cache honest about what a push or delete through the
// proxy changed, once upstream has accepted it: a manifest PUT or DELETE
// makes the tag records it names revalidate, so that the next pull through
// the proxy gets what was just pushed; a DELETE by digest also ends the
// repository's membership of that digest and makes all its tags revalidate.
func (p *Proxy) notePush(resp *http.Response) error {
	req := resp.Request
	if resp.StatusCode/100 != 2 || (req.Method != http.MethodPut && req.Method != http.MethodDelete) {
		return nil
	}
	rp, err := parseObjectPath(req.URL.Path)
	if err != nil || rp.Kind != kindManifest {
		return nil
	}
	c := clientOf(req, rp.Name)
	switch {
	case rp.IsTag():
		p.access.invalidate(c.repo, rp.Reference)
	case req.Method == http.MethodDelete:
		p.access.forgetMember(c.repo, rp.Digest)
		p.access.invalidate(c.repo, "")
	}
	return nil
}

// passError answers a pass-through request whose upstream could not be
// reached, or whose ping upstream answered with 429 or 5xx. The API
// version check (GET /v2/) is answered here instead, and logged OFFLINE:
// with the upstream down, clients may still pull what the cache holds, and
// they ping first.
func (p *Proxy) passError(w http.ResponseWriter, r *http.Request, err error) {
	p.log.Warn("upstream unavailable", "host", targetOf(r), "path", r.URL.Path, "err", err)
	if isPing(r) {
		setOutcome(r, outcomeOffline)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
		w.Write([]byte("{}"))
		return
	}
	setOutcome(r, outcomeError)
	writeError(w, errUpstream(targetOf(r), err))
}

// copyResponse relays an upstream response that regproxy does not cache
// (an error status, say) to the client as it is.
func copyResponse(w http.ResponseWriter, resp *http.Response) {
	copyHeader(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	if _, err := io.Copy(w, resp.Body); err != nil && !errors.Is(err, io.EOF) {
		// The status line is gone: only a cut connection tells the client.
		panic(http.ErrAbortHandler)
	}
}

// copyHeader copies upstream's end-to-end headers to a response: all but
// the hop-by-hop ones (see removeHopHeaders).
func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		dst[k] = append([]string(nil), vv...)
	}
	removeHopHeaders(dst)
}
