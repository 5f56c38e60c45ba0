// Package testupstream is a test fixture: an in-process container registry
// served over TLS, for tests that need a real upstream behind regproxy.
//
// It owns the fake registry (go-containerregistry's pkg/registry), a private
// test CA with a server certificate for a few fake host names, per-kind
// request counters (the proof that a cache did or did not go upstream) and
// fault injection. It does not own any regproxy code and never dials the
// real network: its transport only reaches its own listener.
//
// Go clients bypass proxies for loopback names, so clients must name the
// upstream by a fake host (Host, "registry.test:PORT") and map it to Addr
// with a dial override (Transport, or regproxy's --resolve flag via Resolve).
//
// With WithHub the same listener plays Docker Hub for end-to-end tests with
// real clients: bearer tokens from a token server on AuthHost, and blob GETs
// redirected to a CDN on CDNHost (map all three names with Resolves).
//
// With WithRepoScopedBlobs each repository holds only the blobs and
// manifests pushed or mounted into it, as in distribution/distribution and
// Docker Hub, rather than every blob of the fixture; Holds reports what a
// repository holds.
package testupstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Upstream is a running fake registry. Its fields are set by Start and must
// not be changed.
type Upstream struct {
	Addr   string // "127.0.0.1:PORT", where the server listens
	Port   string // PORT alone
	Host   string // "registry.test:PORT" (see WithHostName); the name clients use
	CAPEM  []byte // the fixture CA certificate, PEM encoded
	CAFile string // CAPEM written to a file in t.TempDir()

	pool      *x509.CertPool
	registry  http.Handler
	transport *http.Transport
	hub       *hub              // nil unless WithHub
	repos     *repos            // nil unless WithRepoScopedBlobs; then registry is repos
	pushRT    http.RoundTripper // what Push uses: transport, plus pushHeader in hub mode

	// fault runs before the registry; nil means no fault.
	fault atomic.Pointer[Fault]

	mu      sync.Mutex       // guards kinds, paths, hosts, total and cdnAuth
	kinds   map[string]int64 // "GET blob" → count
	paths   map[string]int64 // "GET /v2/repo/manifests/tag" → count
	hosts   map[string]int64 // "registry.test" → count
	total   int64
	cdnAuth int64 // requests to cdn.test with an Authorization header
}

// Option configures Start.
type Option func(*config)

type config struct {
	hostName   string
	hub        bool
	repoScoped bool
}

// WithHostName makes Host use name instead of "registry.test". The name must
// be one the server certificate holds: "registry.test", "registry2.test",
// "auth.test", "cdn.test" or "registry-1.docker.io".
func WithHostName(name string) Option {
	return func(c *config) { c.hostName = name }
}

// Start runs an Upstream on 127.0.0.1 until the test ends. Closing the
// server in t.Cleanup waits for its handlers, so no goroutine outlives the
// test.
func Start(t testing.TB, opts ...Option) *Upstream {
	t.Helper()
	cfg := config{hostName: "registry.test"}
	for _, o := range opts {
		o(&cfg)
	}
	if !slices.Contains(certNames, cfg.hostName) {
		t.Fatalf("testupstream: host name %q is not in the certificate %v", cfg.hostName, certNames)
	}
	if cfg.hub && (cfg.hostName == authName || cfg.hostName == cdnName) {
		t.Fatalf("testupstream: hub mode needs %s and %s for itself, not as Host", authName, cdnName)
	}
	p, err := newPKI()
	if err != nil {
		t.Fatalf("testupstream: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testupstream: listen: %v", err)
	}
	quiet := log.New(io.Discard, "", 0)
	u := &Upstream{
		Addr:     ln.Addr().String(),
		CAPEM:    p.CAPEM,
		pool:     p.Pool,
		registry: registry.New(registry.Logger(quiet)),
		kinds:    map[string]int64{},
		paths:    map[string]int64{},
		hosts:    map[string]int64{},
	}
	_, u.Port, _ = net.SplitHostPort(u.Addr)
	u.Host = net.JoinHostPort(cfg.hostName, u.Port)
	u.CAFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(u.CAFile, u.CAPEM, 0o644); err != nil {
		ln.Close()
		t.Fatalf("testupstream: %v", err)
	}
	u.transport = u.newTransport()
	u.pushRT = u.transport
	if cfg.repoScoped {
		// Before newHub, so that the hub's token check runs first and its
		// blob redirect asks the repository-scoped registry.
		u.repos = newRepos(u.registry)
		u.registry = u.repos
	}
	if cfg.hub {
		u.hub = newHub(u, cfg.hostName)
		u.pushRT = &pushTransport{key: u.hub.pushKey, next: u.transport}
	}

	srv := &httptest.Server{
		Listener: ln,
		// ErrorLog discards TLS handshake noise from clients that hang up.
		Config: &http.Server{Handler: http.HandlerFunc(u.serve), ErrorLog: quiet},
		TLS:    &tls.Config{Certificates: []tls.Certificate{p.Server}},
	}
	srv.StartTLS() // HTTP/1.1 only: EnableHTTP2 is false
	t.Cleanup(func() {
		u.transport.CloseIdleConnections()
		srv.Close()
	})
	return u
}

// Resolve returns the mapping of Host to Addr in the form of regproxy's
// --resolve flag: "registry.test:PORT=127.0.0.1:PORT".
func (u *Upstream) Resolve() string { return u.Host + "=" + u.Addr }

// CertPool returns a pool holding only the fixture CA.
func (u *Upstream) CertPool() *x509.CertPool { return u.pool.Clone() }

// Transport returns a transport that trusts only the fixture CA, uses no
// proxy and dials Addr for any certificate DNS name at Port (so
// "registry2.test:PORT", and in hub mode AuthHost and CDNHost, work too). It
// refuses every other address. It adds no credentials. Its idle connections
// are closed when the test ends.
func (u *Upstream) Transport() *http.Transport { return u.transport }

// Client returns an http.Client over Transport.
func (u *Upstream) Client() *http.Client { return &http.Client{Transport: u.transport} }

func (u *Upstream) newTransport() *http.Transport {
	var d net.Dialer
	return &http.Transport{
		Proxy:           nil, // talk to the upstream directly, never via *_PROXY
		TLSClientConfig: &tls.Config{RootCAs: u.pool},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil || port != u.Port || !slices.Contains(certNames, host) {
				return nil, fmt.Errorf("testupstream: refusing to dial %s: only %s names at port %s", addr, certNames, u.Port)
			}
			return d.DialContext(ctx, network, u.Addr)
		},
	}
}

// serve counts the request, then gives the fault hook, if any, the first
// chance to answer it. Counting first means a faulted request still counts.
// In hub mode the request's host picks the handler, and its role goes into
// the context for Kind.
func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	next := u.registry
	if u.hub != nil {
		var ro role
		ro, next = u.hub.route(r)
		r = r.WithContext(context.WithValue(r.Context(), roleKey{}, ro))
	}
	u.count(r)
	if f := u.fault.Load(); f != nil {
		r = r.WithContext(context.WithValue(r.Context(), nextKey{}, next))
		if (*f)(w, r) {
			return
		}
	}
	next.ServeHTTP(w, r)
}
