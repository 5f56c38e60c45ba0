package proxy

import (
	"fmt"
	"net/http"

	"github.com/opencontainers/go-digest"
)

// admit decides whether r may be answered from the cache, or from a fill
// in progress, for the object rp names by digest (see access for the
// rule). When it may not, admit has answered r itself with what upstream
// answers this client, and returns false; a 404 there is what makes a push
// client upload a blob the repository lacks.
func (p *Proxy) admit(w http.ResponseWriter, r *http.Request, rp regPath) (bool, error) {
	c := clientOf(r, rp.Name)
	if p.access.allows(c, rp.Digest) {
		return true, nil
	}
	resp, err := p.verify(r, rp, c)
	switch {
	case err == nil && resp.StatusCode == http.StatusOK:
		return true, nil
	case (err != nil || unhealthy(resp.StatusCode)) && p.access.allowsStale(c, rp.Digest):
		p.log.Warn("upstream failed; serving from cache to a client that had access", "host", targetOf(r), "repo", rp.Name, "ref", rp.Reference, "upstream", upstreamFailure(resp, err))
		return true, nil
	case err != nil:
		return false, errUpstream(targetOf(r), err)
	}
	setOutcome(r, outcomePass)
	switch {
	case r.Method == http.MethodHead:
		relayHead(w, resp)
	case refusal(resp.StatusCode) != "":
		// The HEAD's answer serves the GET too: no second request, which
		// a registry might count as a pull.
		refuse(w, rp, resp)
	default:
		p.pass.ServeHTTP(w, r) // upstream's own answer, body included
	}
	return false, nil
}

// refusal is the OCI error code a registry sends with status, or "" if
// status is not a refusal.
func refusal(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "UNAUTHORIZED"
	case http.StatusForbidden:
		return "DENIED"
	case http.StatusNotFound:
		return "NOT_FOUND"
	}
	return ""
}

// refuse answers a GET with upstream's refusal of the HEAD that checked it:
// its status and headers (a 401's challenge among them) and an OCI error
// body.
func refuse(w http.ResponseWriter, rp regPath, resp *http.Response) {
	copyHeader(w.Header(), resp.Header)
	code := refusal(resp.StatusCode)
	if code == "NOT_FOUND" {
		code = map[kind]string{kindBlob: "BLOB_UNKNOWN", kindManifest: "MANIFEST_UNKNOWN"}[rp.Kind]
	}
	writeError(w, &regError{Status: resp.StatusCode, Code: code, Message: http.StatusText(resp.StatusCode)})
}

// verify asks upstream with a HEAD of the object r names whether the
// client may have it, and records what the answer shows. For a client
// with credentials, a repository whose openness regproxy does not know is
// first asked as a client without them would be (regproxy's probe, which
// fetches an anonymous token where the registry wants one, or uses the
// configured credentials): if that is a 200, the object is open to every
// client and one check serves them all, whatever tokens they come with.
// Otherwise, and always for a client without credentials, upstream is
// asked the client's own question, so that the answer relayed is the one
// this client would get (a 401 challenge, say). HEADs are not pulls, so
// none of this counts against a registry's pull limits.
func (p *Proxy) verify(r *http.Request, rp regPath, c client) (*http.Response, error) {
	if c.hasCred && !p.access.opennessKnown(c.repo) {
		resp, err := p.checkUpstream(r, rp, c.anonymous(), p.probe)
		if err != nil || resp.StatusCode == http.StatusOK || unhealthy(resp.StatusCode) {
			return resp, err
		}
	}
	return p.checkUpstream(r, rp, c, p.upstream)
}

// checkUpstream sends a HEAD of r's object upstream through rt as c (with
// r's Authorization, or without it for an anonymous c), without following
// redirects, and records the answer. The body is closed.
func (p *Proxy) checkUpstream(r *http.Request, rp regPath, c client, rt http.RoundTripper) (*http.Response, error) {
	req := upstreamRequest(r.Context(), r, targetOf(r), http.MethodHead)
	if !c.hasCred {
		req.Header.Del("Authorization")
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if rp.Kind == kindBlob && isRedirect(resp.StatusCode) && resp.Header.Get("Location") != "" {
		// The registry sends its blobs from elsewhere: that is a yes.
		resp.StatusCode, resp.Status = http.StatusOK, "200 OK"
	}
	p.learnFrom(c, rp, resp)
	if rt == p.probe && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
		p.access.closed(c.repo)
	}
	return resp, nil
}

// learnFrom records what upstream's answer to c's request for rp shows.
func (p *Proxy) learnFrom(c client, rp regPath, resp *http.Response) {
	d, mediaType := rp.Digest, ""
	if rp.Kind == kindManifest {
		if announced, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil && d == "" {
			d = announced
		}
		if isManifestType(resp.Header.Get("Content-Type")) {
			mediaType = resp.Header.Get("Content-Type")
		}
	}
	p.access.learn(c, resp.StatusCode, d, mediaType)
}

func isRedirect(status int) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// upstreamFailure describes a failed upstream answer for the log.
func upstreamFailure(resp *http.Response, err error) string {
	if err != nil {
		return fmt.Sprint(err)
	}
	return resp.Status
}
