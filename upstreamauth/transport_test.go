package upstreamauth_test

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regproxy/regproxy/upstreamauth"
)

const manifestURL = "https://registry.test/v2/private/app/manifests/latest"

func TestAnonymousRequestGetsToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aliceAt("registry.test"))
	req, _ := http.NewRequest(http.MethodGet, manifestURL, nil)
	resp, body := e.do(t, req)
	if resp.StatusCode != http.StatusOK || body != "manifest" {
		t.Fatalf("got %d %q, want 200 \"manifest\"", resp.StatusCode, body)
	}
	if got := req.Header.Get("Authorization"); got != "" {
		t.Errorf("caller's request was modified: Authorization %q", got)
	}
	q, _ := url.ParseQuery(e.tokens.lastQuery())
	if got, want := q.Get("service"), "registry.test"; got != want {
		t.Errorf("token service = %q, want %q", got, want)
	}
	if got, want := q.Get("scope"), "repository:private/app:pull"; got != want {
		t.Errorf("token scope = %q, want %q", got, want)
	}

	// The second request sends the cached token up front: no token fetch,
	// no 401 round trip.
	if resp, _ := e.get(t, manifestURL); resp.StatusCode != http.StatusOK {
		t.Fatalf("second request: got %d, want 200", resp.StatusCode)
	}
	if got := e.tokens.requests.Load(); got != 1 {
		t.Errorf("token requests = %d, want 1", got)
	}
	auths, _ := e.reg.seen()
	if want := []string{"", "Bearer tok-1", "Bearer tok-1"}; strings.Join(auths, ",") != strings.Join(want, ",") {
		t.Errorf("registry saw Authorization %q, want %q", auths, want)
	}
}

func TestRegistryWideScope(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aliceAt("registry.test"))
	if resp, _ := e.get(t, "https://registry.test/v2/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("got %d, want 200", resp.StatusCode)
	}
	if got, want := e.tokens.lastQuery(), "service=registry.test"; got != want {
		t.Errorf("token query = %q, want %q (no scope)", got, want)
	}
}

func TestTokenExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aliceAt("registry.test"))
	steps := []struct {
		advance time.Duration
		want    int32 // token requests so far
	}{
		{0, 1},
		{200 * time.Second, 1},
		{69 * time.Second, 1}, // 269s: inside 300s less a tenth
		{2 * time.Second, 2},  // 271s: stale, fetch anew
		{time.Second, 2},
	}
	for i, s := range steps {
		e.clock.Advance(s.advance)
		if resp, _ := e.get(t, manifestURL); resp.StatusCode != http.StatusOK {
			t.Fatalf("step %d: got %d, want 200", i, resp.StatusCode)
		}
		if got := e.tokens.requests.Load(); got != s.want {
			t.Errorf("step %d: token requests = %d, want %d", i, got, s.want)
		}
	}
}

func TestUntouched(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, url, auth string
	}{
		{"client brings its own token", manifestURL, "Bearer client-token"},
		{"client brings Basic", manifestURL, "Basic Ym9iOmh1bnRlcjI="},
		{"host without credentials", "https://other.test/v2/private/app/manifests/latest", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, aliceAt("registry.test"))
			var header []string
			if tt.auth != "" {
				header = []string{"Authorization", tt.auth}
			}
			resp, _ := e.get(t, tt.url, header...)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("got %d, want the registry's 401", resp.StatusCode)
			}
			if got := e.tokens.requests.Load(); got != 0 {
				t.Errorf("token requests = %d, want 0", got)
			}
			auths, _ := e.reg.seen()
			if len(auths) != 1 || auths[0] != tt.auth {
				t.Errorf("registry saw Authorization %q, want one request with %q", auths, tt.auth)
			}
		})
	}
}

func TestBadCredentialsReturnRegistry401(t *testing.T) {
	t.Parallel()
	e := newEnv(t, upstreamauth.Keyring{"registry.test": {Username: user, Password: "wrong"}})
	resp, body := e.get(t, manifestURL)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("got %d, want 401", resp.StatusCode)
	}
	want := `Bearer realm="https://auth.test/token",service="registry.test",scope="repository:private/app:pull"`
	if got := resp.Header.Get("WWW-Authenticate"); got != want {
		t.Errorf("WWW-Authenticate = %q, want %q", got, want)
	}
	if !strings.Contains(body, "UNAUTHORIZED") {
		t.Errorf("body = %q, want the registry's error", body)
	}
	if got := e.tokens.requests.Load(); got != 1 {
		t.Errorf("token requests = %d, want 1", got)
	}
	if got := e.reg.requests.Load(); got != 1 {
		t.Errorf("registry requests = %d, want 1 (no retry without a token)", got)
	}
}

func TestConcurrentRequestsShareOneTokenFetch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aliceAt("registry.test"))
	e.tokens.delay = 50 * time.Millisecond // let every request reach the fetch
	var wg sync.WaitGroup
	codes := make([]int, 16)
	for i := range codes {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, manifestURL, nil)
			resp, err := e.rt.RoundTrip(req)
			if err != nil {
				t.Error(err)
				return
			}
			drainClose(resp)
			codes[i] = resp.StatusCode
		})
	}
	wg.Wait()
	for i, c := range codes {
		if c != http.StatusOK {
			t.Errorf("request %d: got %d, want 200", i, c)
		}
	}
	if got := e.tokens.requests.Load(); got != 1 {
		t.Errorf("token requests = %d, want 1", got)
	}
}

// onlyReader hides strings.Reader from http.NewRequest, which would
// otherwise set GetBody.
type onlyReader struct{ io.Reader }

func TestRequestBodies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		body       io.Reader
		wantCode   int
		wantTokens int32
		wantBodies []string
	}{
		{"replayable body is sent again", strings.NewReader("layer"), http.StatusOK, 1, []string{"layer", "layer"}},
		{"one-shot body is not retried", onlyReader{strings.NewReader("layer")}, http.StatusUnauthorized, 0, []string{"layer"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, aliceAt("registry.test"))
			req, _ := http.NewRequest(http.MethodGet, manifestURL, tt.body)
			resp, _ := e.do(t, req)
			if resp.StatusCode != tt.wantCode {
				t.Errorf("got %d, want %d", resp.StatusCode, tt.wantCode)
			}
			if got := e.tokens.requests.Load(); got != tt.wantTokens {
				t.Errorf("token requests = %d, want %d", got, tt.wantTokens)
			}
			if _, bodies := e.reg.seen(); strings.Join(bodies, ",") != strings.Join(tt.wantBodies, ",") {
				t.Errorf("registry got bodies %q, want %q", bodies, tt.wantBodies)
			}
		})
	}
}

func TestRealmChecks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		host       string
		wantCode   int
		wantPlain  int32 // requests at the plain-http token server
		wantTokens int32 // requests at auth.test
	}{
		{"http realm on another host is refused", "evil.test", http.StatusUnauthorized, 0, 0},
		{"http realm on the registry's host is allowed", "samehost.test", http.StatusOK, 1, 0},
		{"realm redirect is not followed", "redirect-registry.test", http.StatusUnauthorized, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, aliceAt(tt.host))
			resp, _ := e.get(t, "https://"+tt.host+"/v2/private/app/manifests/latest")
			if resp.StatusCode != tt.wantCode {
				t.Errorf("got %d, want %d", resp.StatusCode, tt.wantCode)
			}
			if got := e.plain.requests.Load(); got != tt.wantPlain {
				t.Errorf("plain-http token requests = %d, want %d", got, tt.wantPlain)
			}
			if got := e.tokens.requests.Load(); got != tt.wantTokens {
				t.Errorf("auth.test token requests = %d, want %d", got, tt.wantTokens)
			}
		})
	}
}

func TestBasicChallenge(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		password     string
		wantCode     int
		wantRequests int32 // at the registry, after two requests
	}{
		{"good credentials are remembered", pass, http.StatusOK, 3},
		{"bad credentials give the 401", "wrong", http.StatusUnauthorized, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, upstreamauth.Keyring{"basic.test": {Username: user, Password: tt.password}})
			for i := range 2 {
				resp, _ := e.get(t, "https://basic.test/v2/private/app/manifests/latest")
				if resp.StatusCode != tt.wantCode {
					t.Errorf("request %d: got %d, want %d", i, resp.StatusCode, tt.wantCode)
				}
				if tt.wantCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
					t.Errorf("request %d: the 401 lost its challenge", i)
				}
			}
			if got := e.basic.requests.Load(); got != tt.wantRequests {
				t.Errorf("registry requests = %d, want %d", got, tt.wantRequests)
			}
		})
	}
}

func TestStaleTokenIsReplaced(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aliceAt("registry.test"))
	e.get(t, manifestURL)
	e.tokens.mu.Lock()
	delete(e.tokens.scopes, "tok-1") // the registry forgets it: revoked
	e.tokens.mu.Unlock()
	if resp, _ := e.get(t, manifestURL); resp.StatusCode != http.StatusOK {
		t.Fatalf("got %d, want 200", resp.StatusCode)
	}
	if got := e.tokens.requests.Load(); got != 2 {
		t.Errorf("token requests = %d, want 2", got)
	}
}

func drainClose(resp *http.Response) {
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
}

// TestAnonymousTokens: with AnonymousTokens, a pull on a host without
// configured credentials is answered a Bearer challenge with a token
// fetched without credentials; without it, the 401 stays the caller's.
func TestAnonymousTokens(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.tokens.anonymous.Store(true)
	if resp, _ := e.get(t, manifestURL); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without AnonymousTokens: %d; want the registry's 401", resp.StatusCode)
	}
	anon := upstreamauth.New(e.inner, nil, upstreamauth.Options{Now: e.clock.Now, AnonymousTokens: true})
	req, _ := http.NewRequest(http.MethodGet, manifestURL, nil)
	resp, err := anon.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("with AnonymousTokens: %d; want 200", resp.StatusCode)
	}
	if auths := e.tokens.seen(); len(auths) != 1 || auths[0] != "" {
		t.Fatalf("token server saw Authorization %q; want one request without any", auths)
	}
	del, _ := http.NewRequest(http.MethodDelete, manifestURL, nil)
	resp, err = anon.RoundTrip(del)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("DELETE with AnonymousTokens: %d; want the registry's 401 (pulls only)", resp.StatusCode)
	}
}
