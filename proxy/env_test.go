package proxy_test

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/goleak"

	"github.com/regproxy/regproxy/ca"
	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/internal/azuritetest"
	"github.com/regproxy/regproxy/internal/testupstream"
	"github.com/regproxy/regproxy/proxy"
	"github.com/regproxy/regproxy/upstreamauth"
)

// TestMain stops the Azurite that the Azure tests share before it checks
// for leaked goroutines.
func TestMain(m *testing.M) { goleak.VerifyTestMain(azuritetest.StopSharedAfter(m)) }

// clock is a settable clock for tag TTLs.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// env is one regproxy in front of one upstream, and a client that reaches
// the upstream only through regproxy and trusts only regproxy's CA.
type env struct {
	t        testing.TB
	up       *testupstream.Upstream
	dataDir  string
	clock    *clock
	ttl      time.Duration
	proxyURL *url.URL
	caPEM    []byte
	stop     func()
	// registries is the proxy's allow-list; start reads it.
	registries []string
	// upstreamProxy, when set, is passed to the proxy; start reads it.
	upstreamProxy *url.URL
	// creds are the proxy's configured upstream credentials.
	creds upstreamauth.Keyring
	// logTo, when set, receives the proxy's log as well; start reads it.
	logTo io.Writer
	// others are further upstreams the proxy trusts; start reads them.
	others []*testupstream.Upstream
	// users, when set, must authenticate on the proxy port; start reads it.
	users *proxy.Htpasswd
	// configure, when set, adjusts the proxy's Config (wraps its store,
	// say) before New; start reads it.
	configure func(*proxy.Config)
	// mirror, when set, serves the proxy's mirror port too, at mirrorURL
	// (see startMirror); start reads it.
	mirror    bool
	mirrorURL string
	// adjust, when set, is called with the proxy after New, before it
	// serves; start reads it.
	adjust func(*proxy.Proxy)
	// proxy is the running proxy.
	proxy *proxy.Proxy
}

func newEnv(t testing.TB, opts ...testupstream.Option) *env {
	t.Helper()
	e := &env{t: t, up: testupstream.Start(t, opts...), dataDir: t.TempDir(),
		clock: &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}, ttl: time.Hour,
		registries: []string{"registry.test"}}
	e.start()
	t.Cleanup(func() { e.stop() })
	return e
}

// start runs a proxy on the env's data dir.
func (e *env) start(extraResolve ...string) {
	t := e.t
	t.Helper()
	authority, err := ca.LoadOrCreate(filepath.Join(e.dataDir, "ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cachestore.NewDisk(filepath.Join(e.dataDir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	resolve := map[string]string{}
	for _, r := range e.up.Resolves() {
		from, to, _ := strings.Cut(r, "=")
		resolve[from] = to
	}
	for i := 0; i+1 < len(extraResolve); i += 2 {
		resolve[extraResolve[i]] = extraResolve[i+1]
	}
	cfg := proxy.Config{
		CA: authority, Store: store, Registries: e.registries,
		Resolve: resolve, UpstreamRoots: e.upstreamRoots(), ManifestTTL: e.ttl,
		Now: e.clock.Now, Logger: e.logger(), UpstreamProxy: e.upstreamProxy, Credentials: e.creds,
		Users: e.users,
	}
	if e.configure != nil {
		e.configure(&cfg)
	}
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if e.adjust != nil {
		e.adjust(p)
	}
	e.proxy = p
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ln) }()
	mirrorDone := e.startMirror(p)
	e.proxyURL = &url.URL{Scheme: "http", Host: ln.Addr().String()}
	e.caPEM = authority.CertPEM()
	e.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if err := mirrorDone(); err != nil {
			t.Errorf("ServeMirror: %v", err)
		}
		e.stop = func() {}
	}
}

// secondRegistry starts another upstream, registry2.test, and restarts the
// proxy so that it can reach it; intercept puts it on the allow-list too,
// otherwise it is tunnelled.
func (e *env) secondRegistry(intercept bool) *testupstream.Upstream {
	e.t.Helper()
	other := testupstream.Start(e.t, testupstream.WithHostName("registry2.test"))
	e.others = append(e.others, other)
	e.stop()
	if intercept {
		e.registries = append(e.registries, "registry2.test")
	}
	e.start(other.Host, other.Addr)
	return other
}

// upstreamRoots trusts the CA of every upstream of the env.
func (e *env) upstreamRoots() *x509.CertPool {
	pool := e.up.CertPool()
	for _, o := range e.others {
		pool.AppendCertsFromPEM(o.CAPEM)
	}
	return pool
}

// restart stops the proxy and starts a new one on the same data dir.
func (e *env) restart() {
	e.stop()
	e.start()
}

// transport reaches upstreams through the proxy and trusts only its CA.
func (e *env) transport() *http.Transport {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(e.caPEM) {
		e.t.Fatal("bad CA PEM")
	}
	tr := &http.Transport{Proxy: http.ProxyURL(e.proxyURL)}
	tr.TLSClientConfig = tlsConfig(pool)
	e.t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func (e *env) client() *http.Client {
	return &http.Client{Transport: e.transport(), Timeout: 30 * time.Second}
}

// get fetches a path of the upstream through the proxy.
func (e *env) get(c *http.Client, method, path string, header ...string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, "https://"+e.up.Host+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, body
}

// pull pulls ref through the proxy with go-containerregistry, reading and
// verifying every blob, and returns the image's manifest digest.
func (e *env) pull(repo, tag string) v1.Hash {
	e.t.Helper()
	ref, err := name.ParseReference(e.up.Host + "/" + repo + ":" + tag)
	if err != nil {
		e.t.Fatal(err)
	}
	img, err := remote.Image(ref, remote.WithTransport(e.transport()))
	if err != nil {
		e.t.Fatalf("pull %s: %v", ref, err)
	}
	readAllBlobs(e.t, img)
	d, err := img.Digest()
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// readAllBlobs reads the config and every layer; go-containerregistry
// verifies each against its digest as it reads.
func readAllBlobs(t testing.TB, img v1.Image) {
	t.Helper()
	if _, err := img.RawConfigFile(); err != nil {
		t.Fatalf("config: %v", err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Fatalf("layer: %v", err)
		}
	}
}

// logger is testLogger, plus logTo when it is set.
func (e *env) logger() *slog.Logger {
	if e.logTo == nil {
		return testLogger(e.t)
	}
	return slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{e.t}, e.logTo), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testLogger logs to t.Log for tests; benchmarks discard the access log,
// which would otherwise dominate what they measure.
func testLogger(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter sends log lines to t.Log, so they show only for failures.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
