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
		Transport:     p.upstream,
		FlushInterval: -1, // stream as it comes: uploads, large tag lists
		ErrorLog:      nil,
		ErrorHandler:  p.passError,
	}
}

// passError answers a pass-through request whose upstream could not be
// reached. The API version check (GET /v2/) is answered here instead: with
// the upstream down, clients may still pull what the cache holds, and they
// ping first.
func (p *Proxy) passError(w http.ResponseWriter, r *http.Request, err error) {
	p.log.Warn("upstream unreachable", "host", targetOf(r), "path", r.URL.Path, "err", err)
	if r.URL.Path == "/v2/" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		setOutcome(r, outcomeStale)
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

// copyHeader copies upstream's end-to-end headers to a response.
func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		dst[k] = append([]string(nil), vv...)
	}
	for _, k := range hopHeaders {
		dst.Del(k)
	}
}
