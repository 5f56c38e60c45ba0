package proxy

import (
	"net/http"
)

// serveRegistry is the handler of intercepted connections: the registry
// API of the CONNECT target, cached where the OCI distribution spec makes
// responses immutable or cheap to revalidate.
func (p *Proxy) serveRegistry(w http.ResponseWriter, r *http.Request) {
	describe(r)
	if err := p.routeRegistry(w, r); err != nil {
		setOutcome(r, outcomeError)
		p.logError(r, err)
		writeError(w, err)
	}
}

func (p *Proxy) routeRegistry(w http.ResponseWriter, r *http.Request) error {
	if err := checkHost(r); err != nil {
		return err
	}
	rp, err := parsePath(r)
	if err != nil {
		return err
	}
	switch rp.Kind {
	case kindBlob:
		setOutcome(r, outcomeMiss)
		return p.serveBlob(w, r, rp)
	case kindManifest:
		setOutcome(r, outcomeMiss)
		return p.serveManifest(w, r, rp)
	}
	setOutcome(r, outcomePass)
	p.pass.ServeHTTP(w, r)
	return nil
}

// logError logs the cause of an error answered to a client, once.
func (p *Proxy) logError(r *http.Request, err error) {
	re, ok := err.(*regError)
	if ok && re.Cause == nil && re.Status < 500 {
		return // plain bad input; the access log line says enough
	}
	p.log.Warn("request failed", "method", r.Method, "host", targetOf(r), "path", r.URL.Path, "err", err)
}
