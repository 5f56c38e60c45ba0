package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"time"
)

// newTransport is the transport for all of regproxy's upstream traffic.
// It never consults HTTPS_PROXY: nodes often share one environment file with
// the proxy, and a proxy that proxies through itself loops.
func newTransport(d *dialer, roots *x509.CertPool) *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		ExpectContinueTimeout: time.Second,
		// Blobs must arrive byte for byte as their digest says: never let
		// the transport ask for gzip and decompress behind our back.
		DisableCompression: true,
	}
}

// maxRedirects bounds the redirect chain of one blob fetch.
const maxRedirects = 10

// fetchClient is the http.Client regproxy fetches blobs and manifests
// with. It follows redirects inside regproxy (blob GETs are usually
// answered with a redirect to a CDN or object store; the client never sees
// it), and its errors name URLs without their query, which on a CDN is a
// signature that grants the blob to whoever holds it: errors are logged.
type fetchClient struct{ c *http.Client }

// newFetchClient returns a fetchClient over t. The Authorization header is
// sent only to the registry host itself: net/http keeps it for subdomains
// too, but a CDN under the registry's domain has no business with a
// registry token.
func newFetchClient(t http.RoundTripper) fetchClient {
	return fetchClient{&http.Client{
		Transport: t,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxRedirects {
				return errors.New("too many redirects")
			}
			if req.URL.Host != via[0].URL.Host {
				req.Header.Del("Authorization")
			}
			return nil
		},
	}}
}

// Do sends req, following redirects, and redacts the URL in its error.
func (f fetchClient) Do(req *http.Request) (*http.Response, error) {
	resp, err := f.c.Do(req)
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = redactURL(ue.URL)
	}
	return resp, err
}

// redactURL drops a URL's query and user info, which may hold signatures,
// tokens or passwords, so that it can be logged.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	u.RawQuery, u.ForceQuery, u.User, u.Fragment = "", false, nil, ""
	return u.String()
}

// hopHeaders are hop-by-hop headers (RFC 9110, sections 7.6.1 and 11.7),
// which are never forwarded, whether Connection lists them or not.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopHeaders deletes from h, a message's header about to be
// forwarded, the headers that its Connection header lists and then
// hopHeaders. A sender may make any header hop-by-hop by listing it in
// Connection (RFC 9110, section 7.6.1), as httputil.ReverseProxy honours
// in both directions too.
func removeHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

// fetchHeaders are the client headers that a cache fill must not forward:
// the fill fetches the whole entity whatever part one client asked for.
var fetchHeaders = []string{"Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "Accept-Encoding"}

// upstreamRequest builds the request regproxy sends upstream for r: same
// method, path and end-to-end headers (Authorization included), addressed
// to the intercepted target, under ctx.
func upstreamRequest(ctx context.Context, r *http.Request, target, method string) *http.Request {
	out := r.Clone(ctx)
	out.Method = method
	out.URL.Scheme = "https"
	out.URL.Host = target
	out.RequestURI = ""
	out.Body = nil
	out.ContentLength = 0
	out.Host = r.Host // checkHost has verified that it names target
	removeHopHeaders(out.Header)
	for _, h := range fetchHeaders {
		out.Header.Del(h)
	}
	return out
}
