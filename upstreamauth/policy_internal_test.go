package upstreamauth

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const (
	testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	testHost   = "https://registry.test"
)

// TestMayUseConfigured has one table per clause of mayUseConfigured.
func TestMayUseConfigured(t *testing.T) {
	t.Parallel()
	type request struct {
		name, method, url, auth string
		want                    bool
	}
	clauses := map[string][]request{
		"1. no Authorization of its own": {
			{"anonymous", "GET", "/v2/library/alpine/manifests/3.20", "", true},
			{"client Bearer", "GET", "/v2/library/alpine/manifests/3.20", "Bearer client", false},
			{"client Basic", "HEAD", "/v2/library/alpine/blobs/" + testDigest, "Basic Ym9iOnB3", false},
		},
		"2. GET or HEAD": {
			{"GET manifest", "GET", "/v2/a/manifests/v1", "", true},
			{"HEAD manifest", "HEAD", "/v2/a/manifests/v1", "", true},
			{"PUT manifest", "PUT", "/v2/a/manifests/v1", "", false},
			{"DELETE manifest", "DELETE", "/v2/a/manifests/" + testDigest, "", false},
			{"DELETE blob", "DELETE", "/v2/a/blobs/" + testDigest, "", false},
			{"POST upload", "POST", "/v2/a/blobs/uploads/", "", false},
			{"PATCH upload", "PATCH", "/v2/a/blobs/uploads/uuid", "", false},
			{"PUT upload", "PUT", "/v2/a/blobs/uploads/uuid?digest=" + testDigest, "", false},
			{"POST to a pull path", "POST", "/v2/a/blobs/" + testDigest, "", false},
			{"OPTIONS ping", "OPTIONS", "/v2/", "", false},
			{"POST token", "POST", "/v2/", "", false},
		},
		"3. a pull endpoint": {
			{"ping", "GET", "/v2/", "", true},
			{"manifest by tag", "GET", "/v2/library/alpine/manifests/3.20", "", true},
			{"manifest by digest", "GET", "/v2/library/alpine/manifests/" + testDigest, "", true},
			{"blob", "GET", "/v2/a/b/c/blobs/" + testDigest, "", true},
			{"tag list", "GET", "/v2/a/tags/list?n=10&last=x", "", true},
			{"name holding a section word", "GET", "/v2/tags/manifests/blobs", "", true},
			{"mirror query", "GET", "/v2/a/manifests/v1?ns=docker.io", "", true},
			{"catalog", "GET", "/v2/_catalog", "", false},
			{"upload status", "GET", "/v2/a/blobs/uploads/uuid", "", false},
			{"referrers", "GET", "/v2/a/referrers/" + testDigest, "", false},
			{"token endpoint", "GET", "/token?scope=repository:a:pull,push", "", false},
			{"token under /v2/", "GET", "/v2/token?scope=repository:a:push", "", false},
			{"quay's token endpoint", "GET", "/v2/auth?scope=repository:a:push", "", false},
			{"v1", "GET", "/v1/a/manifests/v1", "", false},
			{"no slash after v2", "GET", "/v2", "", false},
			{"blob by tag", "GET", "/v2/a/blobs/latest", "", false},
			{"bad tag", "GET", "/v2/a/manifests/.hidden", "", false},
			{"bad name", "GET", "/v2/A/manifests/v1", "", false},
			{"empty name", "GET", "/v2//manifests/v1", "", false},
			{"empty reference", "GET", "/v2/a/manifests/", "", false},
			{"extra segment", "GET", "/v2/a/manifests/v1/extra", "", false},
			{"dot segments", "GET", "/v2/a/../b/manifests/v1", "", false},
			{"dot segments out of the name", "GET", "/v2/a/manifests/../blobs/uploads/", "", false},
			{"tags list on nothing", "GET", "/v2/tags/list", "", false},
		},
		"4. no escaped slash": {
			{"plain", "GET", "/v2/a/b/manifests/v1", "", true},
			{"escaped slash", "GET", "/v2/a%2Fb/manifests/v1", "", false},
			{"escaped slash, lowercase", "GET", "/v2/a%2fb/manifests/v1", "", false},
		},
	}
	for clause, reqs := range clauses {
		t.Run(clause, func(t *testing.T) {
			t.Parallel()
			for _, r := range reqs {
				req := httptest.NewRequest(r.method, testHost+r.url, nil)
				if r.auth != "" {
					req.Header.Set("Authorization", r.auth)
				}
				if got := mayUseConfigured(req); got != r.want {
					t.Errorf("%s: mayUseConfigured(%s %s) = %v, want %v", r.name, r.method, r.url, got, r.want)
				}
			}
		})
	}
}

func TestPullRepo(t *testing.T) {
	t.Parallel()
	tests := map[string]string{ // path → repository; "-" means not a pull endpoint
		"/v2/":                                 "",
		"/v2/library/alpine/manifests/3.20":    "library/alpine",
		"/v2/alpine/blobs/" + testDigest:       "alpine",
		"/v2/a/b/c/tags/list":                  "a/b/c",
		"/v2/tags/manifests/blobs":             "tags",
		"/v2/a/blobs/uploads/":                 "-",
		"/v2/_catalog":                         "-",
		"/token":                               "-",
		"/v2/library/alpine/manifests/3.20/x":  "-",
		"/v2/library/alpine/blobs/sha256:abc":  "-",
		"/v2/library/alpine/manifests/sha256:": "-",
	}
	for path, want := range tests {
		got, ok := pullRepo(path)
		if !ok {
			got = "-"
		}
		if got != want {
			t.Errorf("pullRepo(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestPullScopes(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", ""},
		{"repository:library/alpine:pull", "repository:library/alpine:pull"},
		{"repository:app:pull,push", "repository:app:pull"},
		{"repository:app:pull,push,delete", "repository:app:pull"},
		{"repository:app:*", "repository:app:pull"},
		{"repository:app:push", "repository:app:pull"},
		{"repository:reg.io:5000/app:push", "repository:reg.io:5000/app:pull"},
		{"repository(plugin):vieux/sshfs:pull,push", "repository(plugin):vieux/sshfs:pull"},
		{"registry:catalog:*", ""},
		{"repository:a:pull repository:b:push registry:catalog:*", "repository:a:pull repository:b:pull"},
		{"repository:a:push repository:a:pull", "repository:a:pull"},
		{"repository:a", ""},
		{"repository::push", ""},
		{"repositoryx:a:pull", ""},
	}
	for _, tt := range tests {
		if got := pullScopes(tt.in); got != tt.want {
			t.Errorf("pullScopes(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// rtFunc is an in-memory RoundTripper.
type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// fakeRegistry answers every Bearer token with 200 and everything else
// with a challenge for the path's repository; its realm hands out tokens.
func fakeRegistry(r *http.Request) (*http.Response, error) {
	resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Request: r,
		Body: io.NopCloser(strings.NewReader(`{"token":"t","expires_in":300}`))}
	switch {
	case r.URL.Path == "/token":
	case strings.HasPrefix(r.Header.Get("Authorization"), "Bearer "):
	default:
		repo, _ := pullRepo(r.URL.Path)
		resp.StatusCode = http.StatusUnauthorized
		resp.Header.Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="https://auth.test/token",service="registry.test",scope=%q`, repoScope(repo)))
	}
	return resp, nil
}

// TestTokenCacheBound sends pulls of more distinct repositories than the
// token cache holds, as a client making up names would, and checks that
// the cache never outgrows maxTokens.
func TestTokenCacheBound(t *testing.T) {
	t.Parallel()
	rt := New(rtFunc(fakeRegistry), Keyring{"registry.test": {"u", "p"}}, Options{})
	for i := range maxTokens + maxTokens/2 {
		req := httptest.NewRequest(http.MethodGet, fmt.Sprintf("%s/v2/made-up-%d/tags/list", testHost, i), nil)
		resp, err := rt.RoundTrip(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("pull %d: %v, %v", i, resp, err)
		}
		resp.Body.Close()
		if n := rt.tokens.Len(); n > maxTokens {
			t.Fatalf("after %d names the cache holds %d entries, more than %d", i+1, n, maxTokens)
		}
	}
	if n := rt.tokens.Len(); n != maxTokens {
		t.Errorf("cache holds %d entries, want it full at %d", n, maxTokens)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if n := len(rt.inflight); n != 0 {
		t.Errorf("%d token fetches still in flight, want 0", n)
	}
}
