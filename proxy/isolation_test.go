package proxy_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// hubUser is the one account of the Docker-Hub-like upstream: it may pull
// "private/" repositories, which anonymous tokens may not.
var hubUser = &authn.Basic{Username: testupstream.HubUser, Password: testupstream.HubPassword}

// newIsolationEnv is a hub env whose registry keeps blobs per repository,
// as real registries do, with a second intercepted registry beside it.
func newIsolationEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, testupstream.WithHub(), testupstream.WithRepoScopedBlobs())
	e.stop()
	e.registries = []string{"registry.test", "auth.test", "cdn.test"}
	e.start()
	e.secondRegistry(true)
	return e
}

// TestPrivateImagesStayPrivate: client A, with credentials, caches a
// private image. Client B, without them, gets 401 or 404 for its tag, its
// manifest and each blob, under its repository, under a public
// repository's name and on another intercepted registry: by GET and by
// HEAD, with no Authorization and with an anonymous token. Client C, with
// credentials of its own, is served from the cache.
func TestPrivateImagesStayPrivate(t *testing.T) {
	t.Parallel()
	e := newIsolationEnv(t)
	img := e.up.RandomImage(t, 2, 20000)
	e.up.Push(t, "private/app", "v1", img)
	e.up.Push(t, "public/app", "latest", e.up.RandomImage(t, 1, 100))
	if err := e.pullAs(hubUser, "private/app", "v1"); err != nil {
		t.Fatalf("client A: %v", err)
	}
	objects := objectPaths(t, img)
	registry2 := e.others[0].Host
	anonToken := e.token(t, nil, "private/app", "public/app")
	c := e.client()
	for _, host := range []string{e.up.Host, registry2} {
		for _, repo := range []string{"private/app", "public/app"} {
			for _, obj := range objects {
				for _, auth := range []string{"", "Bearer " + anonToken} {
					for _, method := range []string{"GET", "HEAD"} {
						path := "/v2/" + repo + obj
						resp := e.do(c, method, host, path, auth)
						if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusNotFound {
							t.Errorf("client B %s https://%s%s (auth %t): %d; want 401 or 404", method, host, path, auth != "", resp.StatusCode)
						}
					}
				}
			}
		}
	}
	// go-containerregistry asks for the tag with the same Accept header as
	// client A did, so this reaches A's tag record.
	if err := e.pullAs(authn.Anonymous, "private/app", "v1"); err == nil {
		t.Error("client B pulled the private image anonymously")
	}
	e.up.ResetCounts()
	if err := e.pullAs(hubUser, "private/app", "v1"); err != nil {
		t.Fatalf("client C: %v", err)
	}
	if n, cdn := e.up.Count("GET blob"), e.up.CountHost("cdn.test"); n != 0 || cdn != 0 {
		t.Fatalf("client C with its own credentials: %d upstream blob GETs, %d CDN requests; want 0 (served from the cache)", n, cdn)
	}
}

// objectPaths lists, after "/v2/<repo>", the paths of an image's tag,
// manifest by digest, config and layers.
func objectPaths(t *testing.T, img v1.Image) []string {
	t.Helper()
	md, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	paths := []string{"/manifests/v1", "/manifests/" + md.String()}
	for _, b := range blobsOf(t, img) {
		paths = append(paths, "/blobs/"+b.String())
	}
	return paths
}

// do sends method to https://host+path through the proxy with an
// Authorization header if auth is not empty, and drains the answer.
func (e *env) do(c *http.Client, method, host, path, auth string) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, "https://"+host+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s%s: %v", method, host, path, err)
	}
	resp.Body.Close()
	return resp
}

// token fetches a pull token for repos from the hub's token server through
// the proxy, as user (nil: anonymously).
func (e *env) token(t *testing.T, user *authn.Basic, repos ...string) string {
	t.Helper()
	q := url.Values{"service": {"registry.test"}}
	for _, r := range repos {
		q.Add("scope", fmt.Sprintf("repository:%s:pull", r))
	}
	req, _ := http.NewRequest("GET", "https://"+e.up.AuthHost()+"/token?"+q.Encode(), nil)
	if user != nil {
		req.SetBasicAuth(user.Username, user.Password)
	}
	resp, err := e.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || tok.Token == "" {
		t.Fatalf("token: %d %v", resp.StatusCode, err)
	}
	return tok.Token
}

// TestPublicRepositoryCostsNothing: clients of a Docker-Hub-like registry
// come with a fresh anonymous token on every pull. regproxy finds the
// repository public by asking with an anonymous token of its own, and
// then serves every later pull from the cache without asking upstream.
// (The first pull fills the cache with the client's token; the second
// revalidates the tag, which is when regproxy asks for itself.)
func TestPublicRepositoryCostsNothing(t *testing.T) {
	t.Parallel()
	e := newIsolationEnv(t)
	e.up.Push(t, "public/app", "v1", e.up.RandomImage(t, 2, 1000))
	for range 2 {
		if err := e.pullAs(authn.Anonymous, "public/app", "v1"); err != nil {
			t.Fatal(err)
		}
	}
	e.up.ResetCounts()
	for range 3 {
		if err := e.pullAs(authn.Anonymous, "public/app", "v1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, kind := range []string{"HEAD manifest", "GET manifest", "HEAD blob", "GET blob"} {
		if n := e.up.Count(kind); n != 0 {
			t.Errorf("three pulls of a public image with fresh anonymous tokens: %d upstream %ss; want 0", n, kind)
		}
	}
}
