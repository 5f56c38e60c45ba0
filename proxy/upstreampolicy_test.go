package proxy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// These tests reproduce attacks on the cache by a client of the proxy port:
// each one fails without the check it names.

// TestHostHeaderCannotPoisonTags: a client that CONNECTs to the registry
// but names another host in Host must not reach upstream, so that an
// upstream routing by Host cannot hand it an answer the cache would then
// serve to everyone who asks the registry.
func TestHostHeaderCannotPoisonTags(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client()
	e.up.Push(t, "r", "v1", e.up.RandomImage(t, 1, 100))
	_, port, _ := net.SplitHostPort(e.up.Host)
	for _, host := range []string{"evil.example.net", "evil.example.net:" + port, "registry.test:1"} {
		req, _ := http.NewRequest("GET", "https://"+e.up.Host+"/v2/r/manifests/v1", nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("Host %q on a CONNECT to %s: %d; want 400", host, e.up.Host, resp.StatusCode)
		}
	}
	if n := e.up.Total(); n != 0 {
		t.Fatalf("%d upstream requests for foreign Host headers; want 0", n)
	}
	// The target's own name, with or without its port, is fine.
	req, _ := http.NewRequest("GET", "https://"+e.up.Host+"/v2/r/manifests/v1", nil)
	req.Host = strings.ToUpper(e.up.Host)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("Host %q: %d; want 200", req.Host, resp.StatusCode)
	}
}

// TestQueryStringIsPartOfTheTagKey: a tag fetched with a query (a mirror's
// ?ns=) is not the answer for the same tag without it.
func TestQueryStringIsPartOfTheTagKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client()
	e.up.Push(t, "r", "v1", e.up.RandomImage(t, 1, 100))
	for _, path := range []string{"/v2/r/manifests/v1?ns=other.example", "/v2/r/manifests/v1", "/v2/r/manifests/v1?ns=other.example"} {
		if resp, _ := e.get(c, "GET", path); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
	}
	if n := e.up.Count("GET manifest"); n != 2 {
		t.Fatalf("%d upstream manifest GETs for one tag with and without a query, then with it again; want 2", n)
	}
}

// TestRedirectedManifestIsNotCached: a manifest that the registry serves
// through a redirect to another host is relayed but not cached.
func TestRedirectedManifestIsNotCached(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// registry2.test is the same upstream under another name: it serves
	// the same repository, but it is not the host the client asked.
	_, port, _ := net.SplitHostPort(e.up.Host)
	other := net.JoinHostPort("registry2.test", port)
	e.stop()
	e.start(other, e.up.Addr)
	e.up.Push(t, "r", "v1", e.up.RandomImage(t, 1, 100))
	e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET manifest" || r.Host == other {
			return false
		}
		http.Redirect(w, r, "https://"+other+r.URL.Path, http.StatusTemporaryRedirect)
		return true
	})
	c := e.client()
	for range 2 {
		resp, body := e.get(c, "GET", "/v2/r/manifests/v1")
		if resp.StatusCode != http.StatusOK || len(body) == 0 {
			t.Fatalf("redirected manifest: %d; want it relayed with 200", resp.StatusCode)
		}
	}
	if n := e.up.CountHost("registry2.test"); n != 2 {
		t.Fatalf("%d manifest GETs reached the redirect target for two pulls; want 2 (never cached)", n)
	}
}

// TestOnlyManifestTypesAreCached: a 200 whose body verifies but whose
// media type is not a manifest or an index is relayed, not cached.
func TestOnlyManifestTypesAreCached(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	page := []byte("<html>not a manifest</html>")
	e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET manifest" {
			return false
		}
		w.Header().Set("Content-Type", "text/html")
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(page).String())
		w.Write(page)
		return true
	})
	c := e.client()
	for range 2 {
		if resp, body := e.get(c, "GET", "/v2/r/manifests/v1"); resp.StatusCode != http.StatusOK || !bytes.Equal(body, page) {
			t.Fatalf("GET: %d %q", resp.StatusCode, body)
		}
	}
	if n := e.up.Count("GET manifest"); n != 2 {
		t.Fatalf("%d upstream manifest GETs for a text/html answer fetched twice; want 2 (never cached)", n)
	}
}

// TestRateLimitIsPerCredential: a 429 that anonymous traffic draws does
// not lock out a client with its own credentials.
func TestRateLimitIsPerCredential(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.up.Push(t, "r", "v1", e.up.RandomImage(t, 1, 100))
	e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") != "" {
			return false
		}
		w.Header().Set("Retry-After", "3600")
		http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`, http.StatusTooManyRequests)
		return true
	})
	c := e.client()
	if resp, _ := e.get(c, "GET", "/v2/r/manifests/v1"); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("anonymous: %d; want upstream's 429", resp.StatusCode)
	}
	before := e.up.Total()
	if resp, _ := e.get(c, "GET", "/v2/r/tags/list"); resp.StatusCode != http.StatusTooManyRequests || e.up.Total() != before {
		t.Fatalf("anonymous during the back-off: %d, %d upstream requests; want regproxy's own 429", resp.StatusCode, e.up.Total()-before)
	}
	resp, _ := e.get(c, "GET", "/v2/r/manifests/v1", "Authorization", "Basic dGVuYW50OnNlY3JldA==")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a client with its own credentials during an anonymous back-off: %d; want 200", resp.StatusCode)
	}
}

// TestSignedURLsAreNotLogged: a CDN download that fails is logged without
// the query of its signed URL, which grants the blob to whoever holds it.
func TestSignedURLsAreNotLogged(t *testing.T) {
	t.Parallel()
	logs := &lockedBuffer{}
	e := newEnv(t, testupstream.WithHub())
	e.stop()
	e.registries = []string{"registry.test", "auth.test", "cdn.test"}
	e.logTo = logs
	e.start()
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "public/app", "v1", img)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasPrefix(r.URL.Path, "/blobs/") {
			return false
		}
		// A CDN that hangs up: the fetch fails with the URL in its error.
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
		return true
	})
	resp, _ := e.get(e.client(), "GET", fmt.Sprintf("/v2/public/app/blobs/%s", d), "Authorization", "Bearer "+anonymousToken(t, e))
	if resp.StatusCode/100 != 5 {
		t.Fatalf("blob from a CDN that hangs up: %d; want a 5xx", resp.StatusCode)
	}
	if !strings.Contains(logs.String(), "cdn.test") {
		t.Fatalf("the log does not name the CDN download that failed:\n%s", logs)
	}
	if strings.Contains(logs.String(), "sig=") {
		t.Fatalf("the log holds a signed URL's query:\n%s", logs)
	}
}

// anonymousToken gets an anonymous pull token from the hub's token server
// through the proxy.
func anonymousToken(t *testing.T, e *env) string {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://"+e.up.AuthHost()+"/token?service=registry.test&scope=repository:public/app:pull", nil)
	resp, err := e.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || tok.Token == "" {
		t.Fatalf("anonymous token: %d %v", resp.StatusCode, err)
	}
	return tok.Token
}

// lockedBuffer is a bytes.Buffer safe for the proxy's concurrent logging.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
