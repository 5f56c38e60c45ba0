package proxy_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/internal/testupstream"
)

func tlsConfig(pool *x509.CertPool) *tls.Config { return &tls.Config{RootCAs: pool} }

// blobsOf lists an image's config and layer digests.
func blobsOf(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	hashes := []v1.Hash{cfg}
	layers, _ := img.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		hashes = append(hashes, d)
	}
	return hashes
}

func TestPullTwiceFetchesBlobsOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	img := e.up.RandomImage(t, 3, 256<<10)
	e.up.Push(t, "team/app", "v1", img)
	want, _ := img.Digest()

	if got := e.pull("team/app", "v1"); got != want {
		t.Fatalf("first pull digest %s; want %s", got, want)
	}
	if got := e.up.Count("GET blob"); got != 4 {
		t.Fatalf("first pull: %d upstream blob GETs; want 4 (config + 3 layers)", got)
	}
	e.up.ResetCounts()
	if got := e.pull("team/app", "v1"); got != want {
		t.Fatalf("second pull digest %s; want %s", got, want)
	}
	if got := e.up.Count("GET blob") + e.up.Count("GET manifest") + e.up.Count("HEAD manifest"); got != 0 {
		t.Fatalf("second pull within the TTL: %d upstream blob/manifest requests; want 0", got)
	}
}

func TestBlobSharedAcrossRepositories(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	img := e.up.RandomImage(t, 2, 64<<10)
	e.up.Push(t, "one/app", "latest", img)
	e.up.Push(t, "two/app", "latest", img)
	e.pull("one/app", "latest")
	e.pull("two/app", "latest")
	if got := e.up.Count("GET blob"); got != 3 {
		t.Fatalf("%d upstream blob GETs for one image in two repositories; want 3", got)
	}
}

func TestBlobHitHeadAndRange(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	img := e.up.RandomImage(t, 1, 10000)
	e.up.Push(t, "r", "t", img)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	c := e.client()
	path := "/v2/r/blobs/" + d.String()
	_, full := e.get(c, "GET", path)
	e.up.ResetCounts()

	resp, body := e.get(c, "HEAD", path)
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(full)) || len(body) != 0 {
		t.Fatalf("HEAD: status %d length %d body %d; want 200, %d, 0", resp.StatusCode, resp.ContentLength, len(body), len(full))
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != d.String() {
		t.Fatalf("HEAD Docker-Content-Digest %q; want %q", got, d)
	}
	resp, body = e.get(c, "GET", path, "Range", "bytes=100-199")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, full[100:200]) {
		t.Fatalf("Range: status %d, %d bytes; want 206 and bytes 100-199", resp.StatusCode, len(body))
	}
	if got := resp.Header.Get("Content-Range"); got != fmt.Sprintf("bytes 100-199/%d", len(full)) {
		t.Fatalf("Content-Range %q", got)
	}
	if n := e.up.Total(); n != 0 {
		t.Fatalf("HEAD and Range on a cached blob: %d upstream requests; want 0", n)
	}
}

func TestUpstreamErrorsPassThroughUncached(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client()
	path := "/v2/r/blobs/sha256:" + fmt.Sprintf("%064x", 7)
	for i := range 2 {
		resp, body := e.get(c, "GET", path)
		if resp.StatusCode != http.StatusNotFound || !bytes.Contains(body, []byte("BLOB_UNKNOWN")) {
			t.Fatalf("GET %d of a missing blob: %d %s; want upstream's 404 BLOB_UNKNOWN", i, resp.StatusCode, body)
		}
	}
	if got := e.up.Count("GET blob"); got != 2 {
		t.Fatalf("%d upstream GETs for two requests of a missing blob; want 2 (errors are not cached)", got)
	}
}

func TestConcurrentMissesShareOneFetch(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	img := e.up.RandomImage(t, 1, 4<<20)
	e.up.Push(t, "r", "t", img)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	c := e.client()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get("https://" + e.up.Host + "/v2/r/blobs/" + d.String())
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			got, _, err := v1.SHA256(resp.Body)
			if err != nil || got != d {
				t.Errorf("got %s, %v; want %s", got, err, d)
			}
		}()
	}
	wg.Wait()
	if got := e.up.Count("GET blob"); got != 1 {
		t.Fatalf("8 concurrent GETs of one blob made %d upstream GETs; want 1", got)
	}
}

func TestTagTTLAndRevalidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client()
	old := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "r", "latest", old)
	oldDigest, _ := old.Digest()
	path := "/v2/r/manifests/latest"
	accept := []string{"Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"}

	manifestDigest := func(step string, wantGET, wantHEAD int64) string {
		t.Helper()
		e.up.ResetCounts()
		resp, _ := e.get(c, "GET", path, accept...)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", step, resp.StatusCode)
		}
		if g, h := e.up.Count("GET manifest"), e.up.Count("HEAD manifest"); g != wantGET || h != wantHEAD {
			t.Fatalf("%s: upstream manifest GET %d HEAD %d; want %d and %d", step, g, h, wantGET, wantHEAD)
		}
		return resp.Header.Get("Docker-Content-Digest")
	}
	manifestDigest("first", 1, 0)
	manifestDigest("fresh", 0, 0)
	e.clock.Advance(e.ttl + time.Second)
	if got := manifestDigest("stale, unchanged upstream", 0, 1); got != oldDigest.String() {
		t.Fatalf("revalidated digest %s; want %s", got, oldDigest)
	}
	manifestDigest("fresh again after revalidation", 0, 0)

	nu := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "r", "latest", nu)
	newDigest, _ := nu.Digest()
	manifestDigest("fresh, tag moved upstream", 0, 0)
	e.clock.Advance(e.ttl + time.Second)
	if got := manifestDigest("stale, tag moved", 1, 1); got != newDigest.String() {
		t.Fatalf("after the tag moved: %s; want %s", got, newDigest)
	}
}

func TestStaleManifestServedWhenUpstreamFails(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			c := e.client()
			img := e.up.RandomImage(t, 1, 1000)
			e.up.Push(t, "r", "latest", img)
			_, want := e.get(c, "GET", "/v2/r/manifests/latest")
			e.clock.Advance(e.ttl + time.Second)
			e.up.SetFault(testupstream.FailWith(status, "HEAD manifest", "GET manifest"))
			resp, got := e.get(c, "GET", "/v2/r/manifests/latest")
			if resp.StatusCode != 200 || !bytes.Equal(got, want) {
				t.Fatalf("stale GET with upstream %d: status %d, body equal %v; want 200 and the cached body", status, resp.StatusCode, bytes.Equal(got, want))
			}
			if e.up.Count("HEAD manifest") != 1 {
				t.Fatalf("upstream HEADs %d; want 1 (the failed revalidation)", e.up.Count("HEAD manifest"))
			}
		})
	}
}

func TestManifestHeadFromFreshTag(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client()
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "r", "v1", img)
	want, _ := img.Digest()
	mt, _ := img.MediaType()
	e.get(c, "GET", "/v2/r/manifests/v1")
	e.up.ResetCounts()
	resp, _ := e.get(c, "HEAD", "/v2/r/manifests/v1")
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != want.String() || resp.Header.Get("Content-Type") != string(mt) {
		t.Fatalf("HEAD: %d digest %q type %q; want 200 %s %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), resp.Header.Get("Content-Type"), want, mt)
	}
	resp, _ = e.get(c, "GET", "/v2/r/manifests/"+want.String())
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != string(mt) {
		t.Fatalf("GET by digest: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if n := e.up.Total(); n != 0 {
		t.Fatalf("%d upstream requests for HEAD of a fresh tag and GET by a cached digest; want 0", n)
	}
}

func TestRestartKeepsCacheAndCA(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	img := e.up.RandomImage(t, 2, 10000)
	e.up.Push(t, "r", "t", img)
	e.pull("r", "t")
	caBefore := e.caPEM
	e.restart()
	if !bytes.Equal(caBefore, e.caPEM) {
		t.Fatal("the CA changed across a restart")
	}
	e.up.ResetCounts()
	e.pull("r", "t")
	if n := e.up.Count("GET blob"); n != 0 {
		t.Fatalf("after restart: %d upstream blob GETs; want 0", n)
	}
}

func TestHostNotOnListIsTunnelled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	other := e.secondRegistry(false)
	tr := &http.Transport{Proxy: http.ProxyURL(e.proxyURL), TLSClientConfig: tlsConfig(other.CertPool())}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://" + other.Host + "/v2/")
	if err != nil {
		t.Fatalf("GET through a tunnel with the upstream's own CA: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || other.Count("GET ping") != 1 {
		t.Fatalf("tunnelled ping: %d, upstream saw %d", resp.StatusCode, other.Count("GET ping"))
	}
	if issuer := resp.TLS.PeerCertificates[0].Issuer.CommonName; bytes.Contains([]byte(issuer), []byte("regproxy")) {
		t.Fatalf("tunnelled connection presented a certificate from %q; want the upstream's own", issuer)
	}
}

func TestPullWhileUpstreamIsDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	img := e.up.RandomImage(t, 2, 1000)
	e.up.Push(t, "r", "t", img)
	want := e.pull("r", "t")

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := closed.Addr().String()
	closed.Close()
	e.stop()
	e.start(e.up.Host, deadAddr) // the upstream is now unreachable
	e.clock.Advance(e.ttl + time.Second)
	if got := e.pull("r", "t"); got != want {
		t.Fatalf("offline pull digest %s; want %s", got, want)
	}
}

// TestTagByHeadThenDigest follows dockerd and containerd: they HEAD the tag,
// then GET the manifest by digest. The GET that caches the manifest also
// writes the tag record the HEAD established, so that the next HEAD within
// the TTL is a hit; a stale record serves when upstream fails.
func TestTagByHeadThenDigest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client()
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "r", "v1", img)
	want, _ := img.Digest()
	head := func(step string, wantStatus int, wantHEADs int64) {
		t.Helper()
		e.up.ResetCounts()
		resp, _ := e.get(c, "HEAD", "/v2/r/manifests/v1")
		if resp.StatusCode != wantStatus || (wantStatus == 200 && resp.Header.Get("Docker-Content-Digest") != want.String()) {
			t.Fatalf("%s: HEAD %d digest %q; want %d %s", step, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), wantStatus, want)
		}
		if n := e.up.Count("HEAD manifest"); n != wantHEADs {
			t.Fatalf("%s: %d upstream HEADs; want %d", step, n, wantHEADs)
		}
	}
	head("cold", 200, 1)
	e.get(c, "GET", "/v2/r/manifests/"+want.String())
	head("manifest cached by digest, with the HEAD's tag record", 200, 0)
	head("fresh record", 200, 0)
	e.clock.Advance(e.ttl + time.Second)
	e.up.SetFault(testupstream.FailWith(http.StatusServiceUnavailable))
	head("stale record, upstream down", 200, 1)
}

// TestHeadTagRecordKeepsItsAccept: the record a HEAD established is the
// HEAD's own, for its Accept header, whatever the GET by digest that
// caches the manifest sends; and a HEAD's answer waits for that GET only
// briefly.
func TestHeadTagRecordKeepsItsAccept(t *testing.T) {
	t.Parallel()
	const (
		containerdAccept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"
		otherAccept      = "application/vnd.oci.image.manifest.v1+json"
	)
	e := newEnv(t)
	c := e.client()
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "r", "v1", img)
	e.up.Push(t, "r", "v2", e.up.RandomImage(t, 1, 1000))
	d, _ := img.Digest()
	head := func(step, tag, accept string, wantHEADs int64) {
		t.Helper()
		e.up.ResetCounts()
		resp, _ := e.get(c, "HEAD", "/v2/r/manifests/"+tag, "Accept", accept)
		if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") == "" {
			t.Fatalf("%s: HEAD %s: %d, digest %q", step, tag, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
		}
		if n := e.up.Count("HEAD manifest"); n != wantHEADs {
			t.Fatalf("%s: %d upstream HEADs; want %d", step, n, wantHEADs)
		}
	}
	getByDigest := func(d string) {
		t.Helper()
		if resp, _ := e.get(c, "GET", "/v2/r/manifests/"+d, "Accept", otherAccept); resp.StatusCode != 200 {
			t.Fatalf("GET by digest: %d", resp.StatusCode)
		}
	}
	head("cold", "v1", containerdAccept, 1)
	getByDigest(d.String())
	head("the HEAD's Accept", "v1", containerdAccept, 0)
	head("another Accept has no record", "v1", otherAccept, 1)

	resp, _ := e.get(c, "HEAD", "/v2/r/manifests/v2", "Accept", containerdAccept)
	e.clock.Advance(2 * time.Minute) // longer than a HEAD's answer waits
	getByDigest(resp.Header.Get("Docker-Content-Digest"))
	head("GET by digest long after the HEAD", "v2", containerdAccept, 1)
}

func TestSchema1PassesThroughUncached(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	body := []byte(`{"schemaVersion":1,"name":"r","tag":"old","fsLayers":[],"history":[],"signatures":[]}`)
	e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET manifest" {
			return false
		}
		w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
		w.Write(body)
		return true
	})
	c := e.client()
	for i := range 2 {
		resp, got := e.get(c, "GET", "/v2/r/manifests/old")
		if resp.StatusCode != 200 || !bytes.Equal(got, body) {
			t.Fatalf("GET %d: %d %q", i, resp.StatusCode, got)
		}
	}
	if n := e.up.Count("GET manifest"); n != 2 {
		t.Fatalf("%d upstream GETs for two requests of a schema 1 manifest; want 2 (never cached)", n)
	}
	assertNoManifestFiles(t, e)
}

// assertNoManifestFiles checks that nothing was stored for manifests.
func assertNoManifestFiles(t *testing.T, e *env) {
	t.Helper()
	for _, dir := range []string{"manifests", "tags"} {
		filepath.Walk(filepath.Join(e.dataDir, "cache", dir), func(path string, info os.FileInfo, err error) error {
			if err == nil && !info.IsDir() {
				t.Errorf("stored for an uncacheable manifest: %s", path)
			}
			return nil
		})
	}
}

// TestTagByAcceptHeader: one tag answers with an index or a single manifest
// depending on Accept (content negotiation, as Docker Hub does). Each client
// gets what it asked for, and the cache keeps both apart.
func TestTagByAcceptHeader(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const (
		indexType  = "application/vnd.oci.image.index.v1+json"
		singleType = "application/vnd.docker.distribution.manifest.v2+json"
	)
	index := []byte(`{"schemaVersion":2,"mediaType":"` + indexType + `","manifests":[]}`)
	single := []byte(`{"schemaVersion":2,"mediaType":"` + singleType + `","config":{},"layers":[]}`)
	e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET manifest" {
			return false
		}
		body, mt := single, singleType
		if strings.Contains(r.Header.Get("Accept"), indexType) {
			body, mt = index, indexType
		}
		w.Header().Set("Content-Type", mt)
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(body).String())
		w.Write(body)
		return true
	})
	c := e.client()
	for round := range 2 {
		for _, tc := range []struct {
			accept, wantType string
			want             []byte
		}{
			{indexType + ", " + singleType, indexType, index},
			{singleType, singleType, single},
		} {
			resp, got := e.get(c, "GET", "/v2/r/manifests/multi", "Accept", tc.accept)
			if resp.Header.Get("Content-Type") != tc.wantType || !bytes.Equal(got, tc.want) {
				t.Fatalf("round %d, Accept %q: got %s %s", round, tc.accept, resp.Header.Get("Content-Type"), got)
			}
		}
	}
	if n := e.up.Count("GET manifest"); n != 2 {
		t.Fatalf("%d upstream GETs for two Accept headers over two rounds; want 2", n)
	}
}
