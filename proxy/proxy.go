// Package proxy owns regproxy's request path: it accepts CONNECTs on the
// proxy port, intercepts allow-listed registry hosts with leaf certificates
// from the CA, answers blob and manifest requests from the cache (filling
// it through coalesced fills), and passes everything else through. Its
// mirror port (ServeMirror) serves the same registry API to clients that
// use regproxy as a registry mirror. It does
// not own storage layout (cachestore), certificates (ca) or the fill
// mechanics (fill).
package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/fill"
	"github.com/regproxy/regproxy/metrics"
	"github.com/regproxy/regproxy/upstreamauth"
)

// CertSource mints leaf certificates for intercepted hosts and hands out
// the CA certificate for nodes to trust. *ca.CA implements it.
type CertSource interface {
	Leaf(host string) (*tls.Certificate, error)
	CertPEM() []byte
}

// Config configures a Proxy.
type Config struct {
	// CA signs the certificates of intercepted hosts. Required.
	CA CertSource
	// Store keeps blobs, manifests and tag records. Required.
	Store cachestore.Store
	// SpoolDir holds the files of blob fills in progress. Empty means the
	// store's own when it is a cachestore.FileImporter (a verified blob is
	// then committed by a rename), else os.TempDir(). Set it for a remote
	// store, which fills stage into while they download.
	SpoolDir string
	// Registries is the allow-list: "host" (any port) or "host:port".
	// "docker.io" stands for every host Docker Hub serves from.
	Registries []string
	// Resolve maps "host:port" to the "ip:port" dialled instead.
	Resolve map[string]string
	// UpstreamProxy, when set, is an HTTP proxy through which regproxy
	// reaches every upstream (CONNECT), for interceptions and tunnels alike.
	// Nil means direct; the environment's HTTPS_PROXY is never used.
	UpstreamProxy *url.URL
	// Credentials are used upstream for pulls whose client sent no
	// Authorization (upstreamauth says which requests are pulls): the
	// proxy then performs the token exchange itself. Nil means none.
	Credentials upstreamauth.Keyring
	// UpstreamRoots verifies upstream TLS. Nil means the system roots.
	UpstreamRoots *x509.CertPool
	// ManifestTTL is how long a manifest fetched by tag is served without
	// asking upstream. Zero means one hour.
	ManifestTTL time.Duration
	// TTLRules give tags whose name matches one a TTL of their own, zero
	// included (see TTLRule): the first rule that matches wins, and tags
	// no rule matches get ManifestTTL. Nil means ManifestTTL for all.
	TTLRules []TTLRule
	// FillTimeout bounds one blob fill. Zero means one hour.
	FillTimeout time.Duration
	// FillStallTimeout ends an upstream attempt of a fill that sends no
	// byte for this long (it is then resumed, or the fill fails), so that
	// clients are not held for the whole FillTimeout. Zero means a minute.
	FillStallTimeout time.Duration
	// ShutdownGrace is how long a Shutdown that Serve starts, when its
	// context ends, lets responses in flight run on. Zero means 30 seconds.
	ShutdownGrace time.Duration
	// TunnelDeny, when set, tunnels only CONNECTs whose target is on
	// TunnelAllow ("host", any port, or "host:port"); the others get 403.
	// Unset tunnels every target that is not intercepted.
	TunnelDeny  bool
	TunnelAllow []string
	// TunnelIdleTimeout closes a tunnel that moved no byte either way for
	// this long. Zero means five minutes.
	TunnelIdleTimeout time.Duration
	// TunnelMaxPerClient caps the tunnels one client IP holds at once.
	// Zero means 64.
	TunnelMaxPerClient int
	// Users, when set, are the only clients let in on the proxy port: a
	// CONNECT or proxy request must carry Proxy-Authorization: Basic with
	// one of their names and passwords, or it gets 407. /ca.crt, /healthz,
	// /metrics and / stay open. Nil means no authentication: whoever
	// reaches the port may use it.
	Users *Htpasswd
	// Metrics receives the proxy's metrics, which GET /metrics on the proxy
	// port serves. Nil means a set of the Proxy's own (see Proxy.Metrics).
	Metrics *metrics.Metrics
	// Setup holds the node setup scripts that GET /setup/CLIENT serves
	// (package scripts; see setup.go). Nil means no /setup/ pages.
	Setup fs.FS
	// Logger receives the access log and errors. Nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock for tag TTLs and the login cache. Nil means time.Now.
	Now func() time.Time
}

// Proxy is regproxy's proxy server. Serve it on a listener; stop it with
// Shutdown or Close.
type Proxy struct {
	ca        CertSource
	store     cachestore.Store
	allow     *allowList
	dial      *dialer
	tunnels   *tunnels               // raw CONNECT tunnels: policy, per-client cap, idle timeout
	transport *http.Transport        // dials upstreams; owns the idle connections
	limiter   *rateLimiter           // wraps transport; every upstream request goes through it
	upstream  http.RoundTripper      // credentials over limiter: what fetches and pass-throughs use (mirrorTransport)
	fetch     fetchClient            // follows redirects, for fills and manifests
	pass      *httputil.ReverseProxy // for everything not cached
	// probe sends regproxy's own checks of what a repository shows to a
	// client without credentials: the configured ones where there are any.
	probe       http.RoundTripper
	access      *access     // who may be served what from the shared cache
	auth        *clientAuth // checks Proxy-Authorization; nil: the port asks for none
	fills       *fill.Group
	manifests   *manifestCache
	manifestTTL time.Duration
	ttlRules    []TTLRule // see Config.TTLRules and tagTTL
	metrics     *metrics.Metrics
	setup       setupPages // GET /setup/CLIENT
	log         *slog.Logger
	now         func() time.Time

	mitm      *connListener // intercepted connections, for mitmServer
	mitmSrv   *http.Server  // serves the registry API on intercepted connections
	front     *http.Server  // serves the proxy port: CONNECT and plain pages
	mirror    *mirror       // the registry-mirror front end (ServeMirror)
	tlsConfig *tls.Config   // shared by interceptions, for session resumption
	fast      fastConns     // intercepted connections on the fast path (fastpath.go)
	// noFastPath hands every intercepted connection to mitmSrv at once:
	// tests compare the fast path's responses with net/http's.
	noFastPath bool

	grace    time.Duration // of the Shutdown Serve starts
	handlers inflight      // handlers of both servers, which Server.Close does not wait for
	stopping chan struct{} // closed when a shutdown begins
	// abort cuts a shutdown's grace short: Close cancels it.
	abort        context.Context
	cancelAbort  context.CancelFunc
	shutdownOnce sync.Once
	shutdownErr  error // the result of the one shutdown
}

// New validates cfg and returns a Proxy ready to Serve.
func New(cfg Config) (*Proxy, error) {
	if cfg.CA == nil || cfg.Store == nil {
		return nil, errors.New("proxy: CA and Store are required")
	}
	allow, err := parseAllowList(cfg.Registries)
	if err != nil {
		return nil, err
	}
	if err := checkTTLRules(cfg.TTLRules); err != nil {
		return nil, err
	}
	p := &Proxy{
		ca:          cfg.CA,
		store:       cfg.Store,
		allow:       allow,
		dial:        newDialer(cfg.Resolve, cfg.UpstreamProxy),
		manifestTTL: cfg.ManifestTTL,
		ttlRules:    cfg.TTLRules,
		metrics:     cfg.Metrics,
		log:         cfg.Logger,
		now:         cfg.Now,
		grace:       cfg.ShutdownGrace,
		stopping:    make(chan struct{}),
	}
	if p.setup, err = newSetupPages(cfg.Setup, cfg.Registries); err != nil {
		return nil, err
	}
	p.abort, p.cancelAbort = context.WithCancel(context.Background())
	p.setDefaults()
	if cfg.Users != nil {
		p.auth = newClientAuth(cfg.Users, p.now)
	}
	if p.tunnels, err = newTunnels(cfg, p.dial.DialContext); err != nil {
		return nil, err
	}
	p.transport = newTransport(p.dial, cfg.UpstreamRoots)
	p.initMetrics(cfg.CA)
	// Credentials sit above the rate limiter, so that token requests honour
	// a host's Retry-After too. The metrics sit below it: they count what
	// upstream answered, not the 429s the limiter answers itself.
	p.limiter = newRateLimiter(p.metrics.Transport(p.transport, p.upstreamRegistry), p.now, p.log)
	p.probe = upstreamauth.New(p.limiter, cfg.Credentials,
		upstreamauth.Options{Now: p.now, Logger: p.log, AnonymousTokens: true})
	// Mirror clients that send no credentials are signed in as the probe
	// signs in (see mirror.go).
	p.upstream = mirrorTransport{signIn: p.probe,
		next: upstreamauth.New(p.limiter, cfg.Credentials, upstreamauth.Options{Now: p.now, Logger: p.log})}
	p.fetch = newFetchClient(p.upstream)
	p.access = newAccess(p.now)
	p.pass = p.newPassthrough()
	p.fills = fill.New(fill.Config{Store: cfg.Store, SpoolDir: cfg.SpoolDir, Timeout: cfg.FillTimeout,
		StallTimeout: cfg.FillStallTimeout, Logger: p.log, Observer: p.metrics})
	p.manifests = newManifestCache(cfg.Store)
	p.mitm = newConnListener()
	p.tlsConfig = p.newTLSConfig()
	p.mitmSrv = p.newMITMServer()
	p.front = p.newFrontServer()
	p.mirror = p.newMirror(cfg.Registries)
	p.mitmSrv.Handler = p.handlers.track(p.mitmSrv.Handler)
	p.front.Handler = p.handlers.track(p.front.Handler)
	return p, nil
}

func (p *Proxy) setDefaults() {
	if p.manifestTTL <= 0 {
		p.manifestTTL = time.Hour
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.metrics == nil {
		p.metrics = metrics.New()
	}
	if p.grace <= 0 {
		p.grace = defaultShutdownGrace
	}
}

// Timeouts and limits of both servers. Headers are bounded in size and
// time so that a slow or hostile client cannot hold resources; bodies are
// not, since blobs are large and clients slow.
const (
	maxHeaderBytes    = 64 << 10
	readHeaderTimeout = 30 * time.Second
	idleTimeout       = 2 * time.Minute
)
