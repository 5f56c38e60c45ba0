package upstreamauth_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestNonPullsGoAnonymously replays what an anonymous client of the proxy
// port could do with the configured account before: after a pull has put
// a token in the cache, every request that is not a pull must reach the
// registry without Authorization, and fetch no token.
func TestNonPullsGoAnonymously(t *testing.T) {
	t.Parallel()
	const repo = "https://registry.test/v2/private/app"
	tests := []struct {
		name, method, url, body string
	}{
		{"DELETE manifest", http.MethodDelete, repo + "/manifests/latest", ""},
		{"PUT manifest", http.MethodPut, repo + "/manifests/latest", `{"schemaVersion":2}`},
		{"POST upload", http.MethodPost, repo + "/blobs/uploads/", ""},
		{"PATCH upload", http.MethodPatch, repo + "/blobs/uploads/some-uuid", "layer"},
		{"GET upload status", http.MethodGet, repo + "/blobs/uploads/some-uuid", ""},
		{"GET catalog", http.MethodGet, "https://registry.test/v2/_catalog", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, aliceAt("registry.test"))
			if resp, _ := e.get(t, manifestURL); resp.StatusCode != http.StatusOK {
				t.Fatalf("pull: got %d, want 200", resp.StatusCode)
			}
			// strings.Reader: the body is replayable, so a retry was possible.
			req, _ := http.NewRequest(tt.method, tt.url, strings.NewReader(tt.body))
			resp, _ := e.do(t, req)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("got %d, want the registry's 401 for an anonymous %s", resp.StatusCode, tt.method)
			}
			auths, _ := e.reg.seen()
			if got := auths[len(auths)-1]; got != "" || len(auths) != 3 {
				t.Errorf("registry saw %q; want the pull's two requests, then one without Authorization", auths)
			}
			if got := e.tokens.requests.Load(); got != 1 {
				t.Errorf("token requests = %d, want 1 (the pull's)", got)
			}
		})
	}
}

// TestTokenEndpointGetsNoCredentials replays an anonymous token request,
// with push in its scope, to a token server on an intercepted host that
// holds configured credentials (as auth.docker.io does for Docker Hub).
// The token server must see it as anonymous, and answer it as such.
func TestTokenEndpointGetsNoCredentials(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aliceAt("registry.test", "auth.test"))
	q := url.Values{"service": {"registry.test"}, "scope": {"repository:private/app:pull,push,delete"}}
	resp, body := e.get(t, "https://auth.test/token?"+q.Encode())
	if resp.StatusCode != http.StatusUnauthorized || strings.Contains(body, "tok-") {
		t.Errorf("got %d %q, want the token server's 401 to an anonymous request", resp.StatusCode, body)
	}
	if auths := e.tokens.seen(); len(auths) != 1 || auths[0] != "" {
		t.Errorf("token server saw Authorization %q, want one request without", auths)
	}
}

// TestTokenScopeIsPullOnly checks that a token fetched for a pull asks for
// pull alone, whatever the challenge's scope wanted.
func TestTokenScopeIsPullOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aliceAt("registry.test"))
	e.reg.askScope("repository:private/app:pull,push,delete registry:catalog:*")
	if resp, _ := e.get(t, manifestURL); resp.StatusCode != http.StatusOK {
		t.Fatalf("got %d, want 200", resp.StatusCode)
	}
	q, _ := url.ParseQuery(e.tokens.lastQuery())
	if got, want := strings.Join(q["scope"], " "), "repository:private/app:pull"; got != want {
		t.Errorf("token scope = %q, want %q", got, want)
	}
}

// TestBasicCredentialsOnlyOnPulls checks that Basic credentials a registry
// accepted for a pull are sent up front on pulls of that repository alone:
// not on a delete, nor on a pull of another repository.
func TestBasicCredentialsOnlyOnPulls(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aliceAt("basic.test"))
	const repo = "https://basic.test/v2/private/app"
	steps := []struct {
		method, url string
		wantCode    int
		wantAuths   string // what the registry saw for this step, one letter a request: B(asic) or -(none)
	}{
		{http.MethodGet, repo + "/manifests/latest", http.StatusOK, "-B"},
		{http.MethodDelete, repo + "/manifests/latest", http.StatusUnauthorized, "-"},
		{http.MethodGet, repo + "/manifests/latest", http.StatusOK, "B"},
		{http.MethodGet, "https://basic.test/v2/other/app/tags/list", http.StatusOK, "-B"},
		{http.MethodPut, repo + "/manifests/latest", http.StatusUnauthorized, "-"},
	}
	seen := 0
	for i, s := range steps {
		req, _ := http.NewRequest(s.method, s.url, strings.NewReader(""))
		if resp, _ := e.do(t, req); resp.StatusCode != s.wantCode {
			t.Errorf("step %d (%s): got %d, want %d", i, s.method, resp.StatusCode, s.wantCode)
		}
		auths := e.basic.seen()
		var got strings.Builder
		for _, a := range auths[seen:] {
			if a == "" {
				got.WriteByte('-')
			} else if strings.HasPrefix(a, "Basic ") {
				got.WriteByte('B')
			} else {
				got.WriteByte('?')
			}
		}
		seen = len(auths)
		if got.String() != s.wantAuths {
			t.Errorf("step %d (%s %s): registry saw %q, want %q", i, s.method, s.url, got.String(), s.wantAuths)
		}
	}
}
