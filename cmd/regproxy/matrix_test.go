package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// hubSetup is the end-to-end client matrix's world: a registry that behaves
// like Docker Hub (token auth on auth.test, blobs redirected to cdn.test),
// two images pushed to it, and a regproxy binary intercepting all three
// hosts. Each client test gets its own, so tests run in parallel.
type hubSetup struct {
	up     *testupstream.Upstream
	d      *daemon
	caFile string // regproxy's CA, as a node fetches it from /ca.crt

	// Image is a runnable-looking linux/amd64 image with three layers;
	// Index a multi-arch index whose linux/amd64 entry is such an image.
	// Both are public; PrivateImage needs credentials.
	Image, Index, PrivateImage hubImage
}

// hubImage names a pushed image and what a client must report for it.
type hubImage struct {
	Repo, Tag string
	Digest    string // manifest (or index) digest, sha256:…
}

// Ref is the reference a client pulls: registry.test:PORT/repo:tag.
func (i hubImage) Ref(s *hubSetup) string { return s.up.Host + "/" + i.Repo + ":" + i.Tag }

// hubDaemonConfig is what a test adds to the regproxy of a hub setup.
type hubDaemonConfig struct {
	Flags []string
	Env   []string // "NAME=value", on top of startDaemon's environment
}

// newHubSetup pushes the images and starts regproxy with extra flags.
func newHubSetup(t *testing.T, extraFlags ...string) *hubSetup {
	t.Helper()
	return newHubSetupWith(t, func(*testing.T, *testupstream.Upstream) hubDaemonConfig {
		return hubDaemonConfig{Flags: extraFlags}
	})
}

// newHubSetupWith is newHubSetup for daemons whose configuration needs the
// upstream (its port, say): configure runs after the upstream started.
func newHubSetupWith(t *testing.T, configure func(*testing.T, *testupstream.Upstream) hubDaemonConfig) *hubSetup {
	t.Helper()
	up := testupstream.Start(t, testupstream.WithHub())
	s := &hubSetup{up: up}
	s.Image = pushImage(t, up, "public/app", "v1")
	s.PrivateImage = pushImage(t, up, "private/app", "v1")
	idx := up.MultiArchIndex(t)
	up.PushIndex(t, "public/multi", "v1", idx)
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	s.Index = hubImage{Repo: "public/multi", Tag: "v1", Digest: d.String()}

	args := []string{"--registries", "registry.test auth.test cdn.test", "--upstream-ca", up.CAFile}
	for _, r := range up.Resolves() {
		args = append(args, "--resolve", r)
	}
	cfg := configure(t, up)
	s.d = startDaemonEnv(t, cfg.Env, append(args, cfg.Flags...)...)
	s.caFile = s.fetchCA(t)
	up.ResetCounts()
	return s
}

func pushImage(t *testing.T, up *testupstream.Upstream, repo, tag string) hubImage {
	t.Helper()
	img := up.RunnableImage(t, 3)
	up.Push(t, repo, tag, img)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return hubImage{Repo: repo, Tag: tag, Digest: d.String()}
}

// fetchCA gets regproxy's CA from /ca.crt into a file, as a node does.
func (s *hubSetup) fetchCA(t *testing.T) string {
	t.Helper()
	code, pem, err := s.d.get("/ca.crt")
	if err != nil || code != http.StatusOK || !strings.Contains(string(pem), "BEGIN CERTIFICATE") {
		t.Fatalf("GET /ca.crt: %d %v", code, err)
	}
	file := filepath.Join(t.TempDir(), "regproxy-ca.crt")
	if err := os.WriteFile(file, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// ProxyURL is what a node puts in HTTPS_PROXY.
func (s *hubSetup) ProxyURL() string { return "http://" + s.d.addr }

// ProxyEnv is the environment a systemd drop-in gives a daemon: the proxy
// and regproxy's CA as the only extra root.
func (s *hubSetup) ProxyEnv() []string {
	return []string{
		"HTTPS_PROXY=" + s.ProxyURL(), "https_proxy=" + s.ProxyURL(),
		"NO_PROXY=", "no_proxy=",
		"SSL_CERT_FILE=" + s.caFile,
	}
}

// BlobFetches counts the blob bytes that reached upstream: registry blob
// GETs (redirects) and CDN GETs.
func (s *hubSetup) BlobFetches() int64 {
	return s.up.Count("GET blob") + s.up.CountHost("cdn.test")
}

// AssertNoBlobFetchesSince fails if any blob was fetched upstream since
// the count before was taken: the second pull must come from the cache.
func (s *hubSetup) AssertNoBlobFetchesSince(t *testing.T, before int64, what string) {
	t.Helper()
	if got := s.BlobFetches(); got != before {
		t.Errorf("%s: %d blob fetches upstream (registry and CDN); want none", what, got-before)
	}
	if n := s.up.CDNSawAuthorization(); n != 0 {
		t.Errorf("%s: %d CDN requests carried a registry token; want 0", what, n)
	}
}

// ManifestRequests counts the manifest GETs and HEADs that reached
// upstream.
func (s *hubSetup) ManifestRequests() int64 {
	return s.up.Count("GET manifest") + s.up.Count("HEAD manifest")
}

// AssertNoManifestRequestsSince fails if any manifest was asked for
// upstream since the count before was taken: within --manifest-ttl a
// second pull's tags and digests must come from the cache.
func (s *hubSetup) AssertNoManifestRequestsSince(t *testing.T, before int64, what string) {
	t.Helper()
	if got := s.ManifestRequests(); got != before {
		t.Errorf("%s: %d manifest requests upstream (GET %d, HEAD %d in all); want none within --manifest-ttl",
			what, got-before, s.up.Count("GET manifest"), s.up.Count("HEAD manifest"))
	}
}
