package proxy_test

import (
	"bytes"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/regproxy/regproxy/internal/testupstream"
	"github.com/regproxy/regproxy/upstreamauth"
)

// These tests replay, through a real proxy, what an anonymous client of
// the proxy port could do with the configured credentials before they were
// limited to pulls (issue 7): push, delete and mint tokens as the
// configured account. Each reads what the upstream received.

// upstreamRequest is one request as the upstream received it.
type upstreamRequest struct {
	kind, method, path, query, auth string
}

// upstreamLog records, through its fault method (a testupstream.Fault),
// every request the upstream receives, Authorization included; then the
// upstream answers, unless challenge, if set, answers first.
type upstreamLog struct {
	mu   sync.Mutex // guards seen
	seen []upstreamRequest
	// challenge, when set, may answer the request itself (return true).
	challenge testupstream.Fault
}

func (rec *upstreamLog) fault(w http.ResponseWriter, r *http.Request) bool {
	rec.mu.Lock()
	rec.seen = append(rec.seen, upstreamRequest{testupstream.Kind(r), r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Authorization")})
	rec.mu.Unlock()
	return rec.challenge != nil && rec.challenge(w, r)
}

// with returns the recorded requests for which keep is true.
func (rec *upstreamLog) with(keep func(upstreamRequest) bool) []upstreamRequest {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var out []upstreamRequest
	for _, s := range rec.seen {
		if keep(s) {
			out = append(out, s)
		}
	}
	return out
}

// logUpstream installs an upstreamLog on e's upstream.
func logUpstream(e *env, challenge testupstream.Fault) *upstreamLog {
	rec := &upstreamLog{challenge: challenge}
	e.up.SetFault(rec.fault)
	return rec
}

// hubAccountFor returns the hub account, configured for each of hosts.
func hubAccountFor(hosts ...string) upstreamauth.Keyring {
	k := upstreamauth.Keyring{}
	for _, h := range hosts {
		k[h] = upstreamauth.Credentials{Username: testupstream.HubUser, Password: testupstream.HubPassword}
	}
	return k
}

// sendAnonymous sends one request through the proxy as an anonymous
// client and returns its status.
func (e *env) sendAnonymous(method, rawURL string, body []byte) int {
	e.t.Helper()
	req, err := http.NewRequest(method, rawURL, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestAnonymousWritesGetNoConfiguredCredentials: once an anonymous pull
// has made the proxy fetch and cache tokens with the configured account,
// an anonymous DELETE of a manifest, POST of a blob upload and PUT of a
// manifest must reach the registry without Authorization, and no token
// with push may be asked for. Each runs after a pull of its own, with the
// tokens that pull left in the cache.
func TestAnonymousWritesGetNoConfiguredCredentials(t *testing.T) {
	t.Parallel()
	img, err := random.Image(1000, 1)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	attacks := []struct {
		method, path string
		body         []byte
	}{
		{http.MethodDelete, "/v2/private/app/manifests/" + d.String(), nil},
		{http.MethodPost, "/v2/private/app/blobs/uploads/", nil},
		{http.MethodPut, "/v2/private/app/manifests/v2", manifest},
	}
	for _, a := range attacks {
		t.Run(a.method, func(t *testing.T) {
			t.Parallel()
			e := newHubEnv(t, nil)
			e.stop()
			e.creds = hubAccountFor(e.up.Host)
			e.start()
			e.up.Push(t, "private/app", "v1", img)
			rec := logUpstream(e, nil)
			if err := e.pullAs(authn.Anonymous, "private/app", "v1"); err != nil {
				t.Fatalf("anonymous pull of a private image with configured credentials: %v", err)
			}
			if code := e.sendAnonymous(a.method, "https://"+e.up.Host+a.path, a.body); code != http.StatusUnauthorized {
				t.Errorf("anonymous %s %s: got %d, want the registry's 401", a.method, a.path, code)
			}
			got := rec.with(func(s upstreamRequest) bool { return s.method == a.method && s.path == a.path })
			if len(got) == 0 {
				t.Errorf("%s %s never reached the upstream", a.method, a.path)
			}
			for _, s := range got {
				if s.auth != "" {
					t.Errorf("%s %s reached the upstream with the proxy's Authorization (%.12s…)", a.method, a.path, s.auth)
				}
			}
			pushTokens := rec.with(func(s upstreamRequest) bool {
				return s.kind == "GET token" && s.auth != "" && strings.Contains(s.query, "push")
			})
			if len(pushTokens) != 0 {
				t.Errorf("the proxy asked for %d tokens with push in their scope, with the configured account", len(pushTokens))
			}
		})
	}
}

// wantHubBasic answers requests without Basic auth of the hub account
// with a Basic challenge (as cesanta/docker_auth does for anonymous token
// requests, and as a Basic-auth registry does), when want says so.
func wantHubBasic(want func(*http.Request) bool) testupstream.Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		user, pass, ok := r.BasicAuth()
		if !want(r) || (ok && user == testupstream.HubUser && pass == testupstream.HubPassword) {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="testupstream"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
		return true
	}
}

// TestAnonymousTokenRequestGetsNoConfiguredCredentials: a token endpoint
// on an intercepted host that holds configured credentials (as
// auth.docker.io does for Docker Hub accounts) must see an anonymous
// client's token request, push in its scope, as anonymous: no Basic auth of
// the configured account, so no token minted from it.
func TestAnonymousTokenRequestGetsNoConfiguredCredentials(t *testing.T) {
	t.Parallel()
	e := newHubEnv(t, nil)
	e.stop()
	e.creds = hubAccountFor(e.up.Host, e.up.AuthHost())
	e.start()
	e.up.Push(t, "private/app", "v1", e.up.RandomImage(t, 1, 1000))
	rec := logUpstream(e, wantHubBasic(func(r *http.Request) bool { return testupstream.Kind(r) == "GET token" }))
	if err := e.pullAs(authn.Anonymous, "private/app", "v1"); err != nil {
		t.Fatalf("anonymous pull of a private image with configured credentials: %v", err)
	}
	q := url.Values{"service": {"registry.test"}, "scope": {"repository:private/app:pull,push,delete"}}
	if code := e.sendAnonymous(http.MethodGet, "https://"+e.up.AuthHost()+"/token?"+q.Encode(), nil); code != http.StatusUnauthorized {
		t.Errorf("anonymous token request: got %d, want the token server's 401", code)
	}
	asked := rec.with(func(s upstreamRequest) bool { return s.kind == "GET token" && strings.Contains(s.query, "push") })
	if len(asked) == 0 {
		t.Fatal("the anonymous token request never reached the token server")
	}
	for _, s := range asked {
		if s.auth != "" {
			t.Errorf("token server got the anonymous client's request with Authorization (%.12s…)", s.auth)
		}
	}
}

// TestBasicRegistryDeleteGetsNoConfiguredCredentials: against a registry
// that wants Basic auth, an anonymous pull succeeds with the configured
// credentials, and an anonymous DELETE that follows must still reach the
// registry without them (they were once remembered for the whole host).
func TestBasicRegistryDeleteGetsNoConfiguredCredentials(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.stop()
	e.creds = hubAccountFor(e.up.Host)
	e.start()
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "private/app", "v1", img)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	rec := logUpstream(e, wantHubBasic(func(*http.Request) bool { return true }))
	if err := e.pullAs(authn.Anonymous, "private/app", "v1"); err != nil {
		t.Fatalf("anonymous pull from a Basic-auth registry with configured credentials: %v", err)
	}
	if n := len(rec.with(func(s upstreamRequest) bool { return strings.HasPrefix(s.auth, "Basic ") })); n == 0 {
		t.Fatal("the pull never sent the configured credentials")
	}
	path := "/v2/private/app/manifests/" + d.String()
	if code := e.sendAnonymous(http.MethodDelete, "https://"+e.up.Host+path, nil); code != http.StatusUnauthorized {
		t.Errorf("anonymous DELETE: got %d, want the registry's 401", code)
	}
	for _, s := range rec.with(func(s upstreamRequest) bool { return s.method == http.MethodDelete }) {
		if s.auth != "" {
			t.Errorf("DELETE %s reached the registry with the proxy's Authorization", s.path)
		}
	}
	if err := e.pullAs(authn.Anonymous, "private/app", "v1"); err != nil {
		t.Fatalf("the image is gone after an anonymous DELETE: %v", err)
	}
}
