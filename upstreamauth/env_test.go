package upstreamauth_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/regproxy/regproxy/upstreamauth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	user = "alice"
	pass = "s3cr:et=pw" // ':' and '=' on purpose
)

// clock is a settable Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *clock) Advance(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.now = c.now.Add(d) }

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// tokenServer issues "tok-N" to requests with the right Basic credentials
// and remembers the scope of each token. Like cesanta/docker_auth, it
// challenges requests without credentials for Basic auth.
type tokenServer struct {
	clock    *clock
	delay    time.Duration
	requests atomic.Int32
	mu       sync.Mutex
	scopes   map[string]string // token → scope it was issued for
	queries  []string          // raw query of each request
	auths    []string          // Authorization of each request
	// anonymous, when set, issues tokens to requests without credentials
	// too, as Docker Hub does for public repositories.
	anonymous atomic.Bool
}

func (ts *tokenServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := ts.requests.Add(1)
	time.Sleep(ts.delay)
	ts.mu.Lock()
	ts.queries = append(ts.queries, r.URL.RawQuery)
	ts.auths = append(ts.auths, r.Header.Get("Authorization"))
	ts.mu.Unlock()
	if u, p, ok := r.BasicAuth(); (ok || !ts.anonymous.Load()) && (u != user || p != pass) {
		if !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="auth.test"`)
		}
		http.Error(w, `{"details":"incorrect username or password"}`, http.StatusUnauthorized)
		return
	}
	tok := fmt.Sprintf("tok-%d", n)
	ts.mu.Lock()
	ts.scopes[tok] = strings.Join(r.URL.Query()["scope"], " ")
	ts.mu.Unlock()
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token": tok, "expires_in": 300, "issued_at": ts.clock.Now().Format(time.RFC3339),
	})
}

func (ts *tokenServer) scopeOf(tok string) (string, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	s, ok := ts.scopes[tok]
	return s, ok
}

func (ts *tokenServer) seen() (auths []string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]string(nil), ts.auths...)
}

func (ts *tokenServer) lastQuery() string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.queries) == 0 {
		return ""
	}
	return ts.queries[len(ts.queries)-1]
}

// registry serves /v2/ and /v2/private/app/… to holders of a token from
// tokens (scoped to the repository), challenging everyone else with realm.
type registry struct {
	realm    string
	tokens   *tokenServer
	requests atomic.Int32
	mu       sync.Mutex
	auths    []string // Authorization of each request
	bodies   []string // body of each request
	// challengeScope, when set, is the scope the challenge asks for
	// instead of the one the registry checks.
	challengeScope string
}

func (rg *registry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rg.requests.Add(1)
	body, _ := io.ReadAll(r.Body)
	rg.mu.Lock()
	rg.auths = append(rg.auths, r.Header.Get("Authorization"))
	rg.bodies = append(rg.bodies, string(body))
	asked := rg.challengeScope
	rg.mu.Unlock()
	scope := ""
	if r.URL.Path != "/v2/" {
		scope = "repository:private/app:pull"
	}
	if asked == "" {
		asked = scope
	}
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if got, ok := rg.tokens.scopeOf(tok); !ok || got != scope {
		challenge := fmt.Sprintf(`Bearer realm=%q,service="registry.test"`, rg.realm)
		if asked != "" {
			challenge += fmt.Sprintf(`,scope=%q`, asked)
		}
		w.Header().Set("WWW-Authenticate", challenge)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
		return
	}
	_, _ = io.WriteString(w, "manifest")
}

func (rg *registry) seen() (auths, bodies []string) {
	rg.mu.Lock()
	defer rg.mu.Unlock()
	return append([]string(nil), rg.auths...), append([]string(nil), rg.bodies...)
}

func (rg *registry) askScope(scope string) {
	rg.mu.Lock()
	defer rg.mu.Unlock()
	rg.challengeScope = scope
}

// basicRegistry wants Basic credentials.
type basicRegistry struct {
	requests atomic.Int32
	mu       sync.Mutex
	auths    []string // Authorization of each request
}

func (b *basicRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.requests.Add(1)
	b.mu.Lock()
	b.auths = append(b.auths, r.Header.Get("Authorization"))
	b.mu.Unlock()
	if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
		w.Header().Set("WWW-Authenticate", `Basic realm="basic.test"`)
		http.Error(w, "no", http.StatusUnauthorized)
		return
	}
	_, _ = io.WriteString(w, "manifest")
}

func (b *basicRegistry) seen() (auths []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.auths...)
}

// env is a small world of fake hosts, reached through a dial override:
//
//	registry.test, other.test  bearer registry, realm https://auth.test/token
//	auth.test                  TLS token server (tokens)
//	evil.test                  bearer registry, realm http://plain.test/token
//	samehost.test              bearer registry, realm http://samehost.test:8080/token
//	plain.test:80, samehost.test:8080  plain-http token server (plain)
//	redirect.test              bearer registry whose realm redirects to auth.test
//	basic.test                 Basic registry
type env struct {
	clock       *clock
	logs        *syncBuffer
	tokens      *tokenServer
	plain       *tokenServer
	reg         *registry
	evil        *registry
	samehost    *registry
	basic       *basicRegistry
	redirectReg *registry
	rt          *upstreamauth.Transport
	inner       *http.Transport // what rt sends through
}

func newEnv(t *testing.T, keys upstreamauth.Keyring) *env {
	t.Helper()
	c := &clock{now: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	e := &env{clock: c, logs: &syncBuffer{}, basic: &basicRegistry{},
		tokens: &tokenServer{clock: c, scopes: map[string]string{}},
		plain:  &tokenServer{clock: c, scopes: map[string]string{}}}
	e.reg = &registry{realm: "https://auth.test/token", tokens: e.tokens}
	e.evil = &registry{realm: "http://plain.test/token", tokens: e.plain}
	e.samehost = &registry{realm: "http://samehost.test:8080/token", tokens: e.plain}
	e.redirectReg = &registry{realm: "https://redirect.test/token", tokens: e.tokens}
	redirect := http.RedirectHandler("https://auth.test/token", http.StatusTemporaryRedirect)

	routes := map[string]string{}
	var pool = x509.NewCertPool()
	serve := func(h http.Handler, tlsOn bool, names ...string) {
		s := httptest.NewUnstartedServer(h)
		if tlsOn {
			s.StartTLS()
			pool.AddCert(s.Certificate())
		} else {
			s.Start()
		}
		t.Cleanup(s.Close)
		for _, n := range names {
			routes[n] = s.Listener.Addr().String()
		}
	}
	serve(e.reg, true, "registry.test:443", "other.test:443")
	serve(e.tokens, true, "auth.test:443")
	serve(e.evil, true, "evil.test:443")
	serve(e.samehost, true, "samehost.test:443")
	serve(e.plain, false, "plain.test:80", "samehost.test:8080")
	serve(e.redirectReg, true, "redirect-registry.test:443")
	serve(redirect, true, "redirect.test:443")
	serve(e.basic, true, "basic.test:443")

	var d net.Dialer
	inner := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			to, ok := routes[addr]
			if !ok {
				return nil, fmt.Errorf("test: no route to %s", addr)
			}
			return d.DialContext(ctx, network, to)
		},
		// Every httptest server has the same certificate, for example.com.
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "example.com"},
	}
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.inner = inner
	e.rt = upstreamauth.New(inner, keys, upstreamauth.Options{Now: c.Now, Logger: log})
	t.Cleanup(e.rt.CloseIdleConnections) // runs before the servers close
	t.Cleanup(func() { e.checkLogs(t) })
	return e
}

// checkLogs fails the test if a credential or token reached the log.
func (e *env) checkLogs(t *testing.T) {
	t.Helper()
	logs := e.logs.String()
	for _, secret := range []string{pass, "tok-", "Basic ", "Bearer "} {
		if strings.Contains(logs, secret) {
			t.Errorf("log holds %q:\n%s", secret, logs)
		}
	}
}

// get sends a GET for url through the Transport and returns status and body.
func (e *env) get(t *testing.T, url string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return e.do(t, req)
}

func (e *env) do(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := e.rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("RoundTrip(%s %s): %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// aliceAt returns a keyring with alice's credentials for hosts.
func aliceAt(hosts ...string) upstreamauth.Keyring {
	k := upstreamauth.Keyring{}
	for _, h := range hosts {
		k[h] = upstreamauth.Credentials{Username: user, Password: pass}
	}
	return k
}
