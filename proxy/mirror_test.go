package proxy_test

import (
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/regproxy/regproxy/internal/dockerhub"
	"github.com/regproxy/regproxy/internal/testupstream"
	"github.com/regproxy/regproxy/proxy"
)

// startMirror serves p's mirror port on loopback when e.mirror is set, and
// returns what waits for ServeMirror to return once the proxy shuts down.
func (e *env) startMirror(p *proxy.Proxy) func() error {
	if !e.mirror {
		return func() error { return nil }
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.ServeMirror(ln) }()
	e.mirrorURL = "http://" + ln.Addr().String()
	return func() error { return <-done }
}

// mirrorEnv is an env whose proxy serves its mirror port too, in front of
// two Docker-Hub-like upstreams: up, registry.test, reached under its own
// port (as containerd's ?ns= names it) and on 443 (a registries.conf path
// prefix cannot carry a port), and hub, which plays Docker Hub's
// registry-1.docker.io, for requests that name no registry.
type mirrorEnv struct {
	*env
	hub *testupstream.Upstream
	log *syncBuffer
}

func newMirrorEnv(t *testing.T, opts ...testupstream.Option) *mirrorEnv {
	t.Helper()
	e := newEnv(t, append([]testupstream.Option{testupstream.WithHub()}, opts...)...)
	hub := testupstream.Start(t, testupstream.WithHub(), testupstream.WithHostName(dockerhub.Registry))
	e.stop()
	m := &mirrorEnv{env: e, hub: hub, log: &syncBuffer{}}
	e.others = append(e.others, hub)
	e.registries = []string{"registry.test", "auth.test", "cdn.test", "docker.io"}
	e.mirror, e.logTo = true, m.log
	resolve := []string{"registry.test:443", e.up.Addr, dockerhub.Registry + ":443", hub.Addr}
	for _, r := range hub.Resolves() {
		from, to, _ := strings.Cut(r, "=")
		resolve = append(resolve, from, to)
	}
	e.start(resolve...)
	return m
}

// get sends method to the mirror port with auth as Authorization (none if
// empty) and returns the response and its body.
func (m *mirrorEnv) get(method, path, auth string, header ...string) (*http.Response, []byte) {
	m.t.Helper()
	req, err := http.NewRequest(method, m.mirrorURL+path, nil)
	if err != nil {
		m.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	tr := &http.Transport{Proxy: nil}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		m.t.Fatalf("%s %s on the mirror: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		m.t.Fatalf("%s %s on the mirror: read body: %v", method, path, err)
	}
	return resp, body
}

// toMirror sends every request to the mirror port over plain HTTP, with
// ?ns=ns added when ns is set, as containerd does for a hosts.toml mirror.
type toMirror struct {
	mirror, ns string
	next       http.RoundTripper
}

func (t toMirror) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.URL.Scheme, req.URL.Host = "http", t.mirror
	if t.ns != "" {
		q := req.URL.Query()
		q.Set("ns", t.ns)
		req.URL.RawQuery = q.Encode()
	}
	return t.next.RoundTrip(req)
}

// pull pulls "mirror.test/"+ref with go-containerregistry as a mirror
// client would (ns as toMirror adds it), reads every blob, and returns the
// manifest digest.
func (m *mirrorEnv) pull(ns, ref string) (v1.Hash, error) {
	r, err := name.ParseReference("mirror.test/" + ref)
	if err != nil {
		return v1.Hash{}, err
	}
	tr := &http.Transport{Proxy: nil}
	defer tr.CloseIdleConnections()
	img, err := remote.Image(r, remote.WithTransport(toMirror{strings.TrimPrefix(m.mirrorURL, "http://"), ns, tr}))
	if err != nil {
		return v1.Hash{}, err
	}
	readAllBlobs(m.t, img)
	return img.Digest()
}

// TestMirrorNamesTheUpstream: each way of naming the registry reaches
// that registry, with the registry's own path, and is logged front=mirror
// under that registry; Docker Hub's one-element names get "library/".
func TestMirrorNamesTheUpstream(t *testing.T) {
	t.Parallel()
	m := newMirrorEnv(t)
	for _, tc := range []struct {
		Description string
		Up          *testupstream.Upstream
		Repo, Tag   string // upstream's
		NS, Ref     string // the client's: ?ns= and what follows "mirror.test/"
		Logged      string // the access log's host
	}{
		{"containerd ns", m.up, "public/app", "ns", m.up.Host, "public/app:ns", m.up.Host},
		{"containerd ns=docker.io", m.hub, "public/app", "ns", "docker.io", "public/app:ns", "registry-1.docker.io:443"},
		{"path prefix", m.up, "public/app", "prefix", "", "registry.test/public/app:prefix", "registry.test:443"},
		{"path prefix docker.io, library", m.hub, "library/alpine", "prefix", "", "docker.io/alpine:prefix", "registry-1.docker.io:443"},
		{"no registry: Docker Hub", m.hub, "public/app", "hub", "", "public/app:hub", "registry-1.docker.io:443"},
		{"no registry, one element: library", m.hub, "library/alpine", "hub", "", "alpine:hub", "registry-1.docker.io:443"},
	} {
		t.Run(tc.Description, func(t *testing.T) {
			img := tc.Up.RandomImage(t, 1, 1000)
			tc.Up.Push(t, tc.Repo, tc.Tag, img)
			want, _ := img.Digest()
			path := "/v2/" + tc.Repo + "/manifests/" + tc.Tag
			ups := []*testupstream.Upstream{m.up, m.hub}
			before := []int64{m.up.CountPath("GET", path), m.hub.CountPath("GET", path)}
			got, err := m.pull(tc.NS, tc.Ref)
			if err != nil || got != want {
				t.Fatalf("pull through the mirror: %v, %v; want %v", got, err, want)
			}
			for i, up := range ups {
				// The hub may challenge the first GET: regproxy signs in
				// and asks again.
				switch n := up.CountPath("GET", path) - before[i]; {
				case up == tc.Up && n == 0:
					t.Errorf("upstream %s got no GET of %s", up.Host, path)
				case up != tc.Up && n != 0:
					t.Errorf("upstream %s got %d GETs of %s; want none", up.Host, n, path)
				}
			}
			waitLogLine(t, m.log, regexp.MustCompile(`method=GET host=`+regexp.QuoteMeta(tc.Logged)+
				` kind=manifest repo=`+regexp.QuoteMeta(tc.Repo)+` ref=`+tc.Tag+` .* front=mirror\n`))
		})
	}
}

// TestMirrorAnswersAndRefusals: the mirror answers the ping itself and
// refuses writes, the catalog and registries off the allow-list, with an
// OCI error body; none of these reaches upstream.
func TestMirrorAnswersAndRefusals(t *testing.T) {
	t.Parallel()
	m := newMirrorEnv(t)
	readOnly := `{"errors":[{"code":"UNSUPPORTED","message":"the regproxy mirror is read-only: push to and delete from the registry itself"}]}`
	notListed := func(r string) string {
		return `{"errors":[{"code":"DENIED","message":"regproxy mirrors only the registries on its --registries list (registry.test auth.test cdn.test docker.io); ` + r + ` is not on it"}]}`
	}
	digest := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		Description, Method, Path string
		Code                      int
		Want                      string
	}{
		{"ping", "GET", "/v2/", http.StatusOK, `{}`},
		{"ping with ns", "GET", "/v2/?ns=quay.io", http.StatusOK, `{}`},
		{"push a manifest", "PUT", "/v2/public/app/manifests/v2?ns=" + m.up.Host, http.StatusMethodNotAllowed, readOnly},
		{"start an upload", "POST", "/v2/registry.test/public/app/blobs/uploads/", http.StatusMethodNotAllowed, readOnly},
		{"delete a blob", "DELETE", "/v2/public/app/blobs/" + digest, http.StatusMethodNotAllowed, readOnly},
		{"registry off the list by ns", "GET", "/v2/org/app/manifests/v1?ns=quay.io", http.StatusForbidden, notListed("quay.io")},
		{"registry off the list by prefix", "GET", "/v2/ghcr.io/org/app/blobs/" + digest, http.StatusForbidden, notListed("ghcr.io")},
		{"catalog", "GET", "/v2/_catalog", http.StatusNotFound, `{"errors":[{"code":"UNSUPPORTED","message":"the regproxy mirror does not list repositories"}]}`},
		{"not the registry API", "GET", "/token?scope=x", http.StatusNotFound, `{"errors":[{"code":"UNSUPPORTED","message":"the mirror serves the registry API only, under /v2/"}]}`},
		{"two ns", "GET", "/v2/a/manifests/v1?ns=quay.io&ns=docker.io", http.StatusBadRequest, `{"errors":[{"code":"NAME_INVALID","message":"more than one ns parameter"}]}`},
		{"bad ns", "GET", "/v2/a/manifests/v1?ns=a%20b", http.StatusBadRequest, `{"errors":[{"code":"NAME_INVALID","message":"not a registry host[:port]: a b"}]}`},
		{"dot segments", "GET", "/v2/registry.test/../a/manifests/v1", http.StatusBadRequest, `{"errors":[{"code":"UNSUPPORTED","message":"path has dot segments"}]}`},
	} {
		t.Run(tc.Description, func(t *testing.T) {
			resp, body := m.get(tc.Method, tc.Path, "")
			if resp.StatusCode != tc.Code || string(body) != tc.Want {
				t.Errorf("%s %s: %d %s; want %d %s", tc.Method, tc.Path, resp.StatusCode, body, tc.Code, tc.Want)
			}
			if v := resp.Header.Get("Docker-Distribution-Api-Version"); v != "registry/2.0" {
				t.Errorf("Docker-Distribution-Api-Version %q; want registry/2.0", v)
			}
			if tc.Code == http.StatusMethodNotAllowed && resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("Allow %q; want GET, HEAD", resp.Header.Get("Allow"))
			}
		})
	}
	if n, h := m.up.Total(), m.hub.Total(); n != 0 || h != 0 {
		t.Errorf("upstreams got %d and %d requests; want none", n, h)
	}
}

// TestMirrorDockerHubNotListed: without docker.io on the allow-list, a
// request that names no registry is refused, and the refusal says what is
// mirrored.
func TestMirrorDockerHubNotListed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.stop()
	e.mirror = true
	e.start()
	m := &mirrorEnv{env: e}
	resp, body := m.get("GET", "/v2/library/alpine/manifests/3", "")
	want := `{"errors":[{"code":"DENIED","message":"regproxy mirrors only the registries on its --registries list (registry.test); docker.io is not on it"}]}`
	if resp.StatusCode != http.StatusForbidden || string(body) != want {
		t.Errorf("GET with no registry named: %d %s; want 403 %s", resp.StatusCode, body, want)
	}
}

// TestMirrorSharesTheCache: what one front end cached, the other serves
// without fetching a blob again, in both directions.
func TestMirrorSharesTheCache(t *testing.T) {
	t.Parallel()
	m := newMirrorEnv(t)
	one, two := m.up.RandomImage(t, 2, 5000), m.up.RandomImage(t, 2, 5000)
	m.up.Push(t, "public/one", "v1", one)
	m.up.Push(t, "public/two", "v1", two)

	m.env.pull("public/one", "v1") // through the proxy port
	m.up.ResetCounts()
	if _, err := m.pull(m.up.Host, "public/one:v1"); err != nil {
		t.Fatalf("mirror pull of what the proxy port cached: %v", err)
	}
	m.assertNoBlobFetches(t, "mirror pull of what the proxy port cached")

	if _, err := m.pull(m.up.Host, "public/two:v1"); err != nil {
		t.Fatalf("mirror pull: %v", err)
	}
	m.up.ResetCounts()
	m.env.pull("public/two", "v1")
	m.assertNoBlobFetches(t, "proxy port pull of what the mirror cached")
}

func (m *mirrorEnv) assertNoBlobFetches(t *testing.T, what string) {
	t.Helper()
	if n, cdn := m.up.Count("GET blob"), m.up.CountHost("cdn.test"); n != 0 || cdn != 0 {
		t.Errorf("%s: %d upstream blob GETs, %d CDN requests; want none", what, n, cdn)
	}
}

// TestMirrorPrivateImagesStayPrivate: a private image cached through one
// front end is served through the other only to a client that proves
// access with its own credentials: not to one with none (the mirror signs
// in anonymously for it) nor to one with an anonymous token.
func TestMirrorPrivateImagesStayPrivate(t *testing.T) {
	t.Parallel()
	m := newMirrorEnv(t, testupstream.WithRepoScopedBlobs())
	viaProxy, viaMirror := m.up.RandomImage(t, 2, 5000), m.up.RandomImage(t, 2, 5000)
	m.up.Push(t, "private/a", "v1", viaProxy)
	m.up.Push(t, "private/b", "v1", viaMirror)
	if err := m.pullAs(hubUser, "private/a", "v1"); err != nil {
		t.Fatalf("client with credentials, proxy port: %v", err)
	}
	userToken := m.token(t, hubUser, "private/b")
	for _, obj := range objectPaths(t, viaMirror) {
		if resp, _ := m.get("GET", "/v2/private/b"+obj+"?ns="+m.up.Host, "Bearer "+userToken); resp.StatusCode != http.StatusOK {
			t.Fatalf("client with credentials, mirror: GET %s: %d", obj, resp.StatusCode)
		}
	}

	anonToken := m.token(t, nil, "private/a", "private/b")
	for repo, img := range map[string]v1.Image{"private/a": viaProxy, "private/b": viaMirror} {
		for _, obj := range objectPaths(t, img) {
			for _, auth := range []string{"", "Bearer " + anonToken} {
				for _, method := range []string{"GET", "HEAD"} {
					path := "/v2/" + repo + obj + "?ns=" + url.QueryEscape(m.up.Host)
					if resp, _ := m.get(method, path, auth); resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusNotFound {
						t.Errorf("mirror client %s %s (auth %t): %d; want 401 or 404", method, path, auth != "", resp.StatusCode)
					}
				}
			}
		}
	}
	if err := m.pullAs(authn.Anonymous, "private/b", "v1"); err == nil {
		t.Error("anonymous client of the proxy port pulled the private image the mirror cached")
	}

	m.up.ResetCounts()
	other := m.token(t, hubUser, "private/a")
	for _, obj := range objectPaths(t, viaProxy) {
		if resp, _ := m.get("GET", "/v2/private/a"+obj+"?ns="+m.up.Host, "Bearer "+other); resp.StatusCode != http.StatusOK {
			t.Errorf("mirror client with credentials: GET %s: %d", obj, resp.StatusCode)
		}
	}
	m.assertNoBlobFetches(t, "mirror client with credentials, image the proxy port cached")
}

// TestMirrorHeadAndRange: HEAD and Range requests of a cached blob are
// answered from the cache through the mirror too.
func TestMirrorHeadAndRange(t *testing.T) {
	t.Parallel()
	m := newMirrorEnv(t)
	img := m.up.RandomImage(t, 1, 4000)
	m.up.Push(t, "public/app", "v1", img)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	blob, _ := io.ReadAll(rc)
	rc.Close()
	path := "/v2/registry.test/public/app/blobs/" + d.String()
	if resp, body := m.get("GET", path, ""); resp.StatusCode != http.StatusOK || string(body) != string(blob) {
		t.Fatalf("GET blob: %d, %d bytes; want 200, %d bytes", resp.StatusCode, len(body), len(blob))
	}
	m.up.ResetCounts()
	resp, _ := m.get("HEAD", path, "")
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(blob)) || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Errorf("HEAD blob: %d, length %d, digest %q; want 200, %d, %s", resp.StatusCode, resp.ContentLength,
			resp.Header.Get("Docker-Content-Digest"), len(blob), d)
	}
	resp, body := m.get("GET", path, "", "Range", "bytes=10-19")
	if resp.StatusCode != http.StatusPartialContent || string(body) != string(blob[10:20]) {
		t.Errorf("GET blob bytes=10-19: %d %q; want 206 %q", resp.StatusCode, body, blob[10:20])
	}
	m.assertNoBlobFetches(t, "HEAD and Range of a cached blob")
	if n := m.up.Count("HEAD blob"); n != 0 {
		t.Errorf("%d HEADs of the blob upstream; want none (the repository is known open)", n)
	}
}

// TestMirrorTagListLinks: a tag list's Link to the next page leads back
// through the mirror, as the client named the registry.
func TestMirrorTagListLinks(t *testing.T) {
	t.Parallel()
	m := newMirrorEnv(t)
	m.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET tags" {
			return false
		}
		w.Header().Set("Link", `</v2/public/app/tags/list?last=v1&n=1>; rel="next"`)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"name":"public/app","tags":["v1"]}`)
		return true
	})
	for _, tc := range []struct{ Path, Want string }{
		{"/v2/registry.test/public/app/tags/list?n=1", `</v2/registry.test/public/app/tags/list?last=v1&n=1>; rel="next"`},
		{"/v2/public/app/tags/list?n=1&ns=" + m.up.Host, `</v2/public/app/tags/list?last=v1&n=1&ns=` + url.QueryEscape(m.up.Host) + `>; rel="next"`},
	} {
		resp, body := m.get("GET", tc.Path, "")
		if got := resp.Header.Get("Link"); resp.StatusCode != http.StatusOK || got != tc.Want {
			t.Errorf("GET %s: %d %s, Link %s; want 200, Link %s", tc.Path, resp.StatusCode, body, got, tc.Want)
		}
	}
}
