package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	s := pushHubImages(t, up)

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

// outageTTL is the --manifest-ttl of the setups whose tests end with pulls
// during an outage (see beginOutage), which wait it out.
const outageTTL = time.Second

// outageFlags are the regproxy flags of such a setup.
var outageFlags = []string{"--manifest-ttl", outageTTL.String()}

// outage is a registry outage begun by beginOutage.
type outage struct {
	skip  int   // regproxy's log lines before it began
	blobs int64 // BlobFetches then
}

// beginOutage puts the upstream into an outage until the test ends: every
// request to every hub host (registry, token server and CDN), the /v2/
// ping included, is answered 503 with an OCI error body, as a registry
// outage does. The requests it refuses still count. Then it waits until
// expired, a time by which every tag record regproxy holds is past
// --manifest-ttl: the TTL after the last pull that may have validated one
// (a pull that gets a tag REVALIDATED writes its record again).
func (s *hubSetup) beginOutage(t *testing.T, expired time.Time) outage {
	t.Helper()
	s.up.SetFault(testupstream.FailWith(http.StatusServiceUnavailable))
	// regproxy compares strictly, on its own reading of the clock: a few
	// milliseconds more make the record expired whatever the rounding.
	if wait := time.Until(expired.Add(50 * time.Millisecond)); wait > 0 {
		time.Sleep(wait)
	}
	return outage{skip: s.d.lines(), blobs: s.BlobFetches()}
}

// pushUncached pushes a public image that no client of the test pulls
// before the outage: during it, regproxy has nothing to serve for it.
func (s *hubSetup) pushUncached(t *testing.T) hubImage {
	t.Helper()
	blobs := s.BlobFetches()
	img := pushImage(t, s.up, "public/uncached", "v1")
	if s.BlobFetches() != blobs {
		t.Fatal("pushing an image counted blob fetches") // the counts would mean nothing
	}
	return img
}

// isRequest reports whether e is an access-log line for a request to the
// registry: regproxy's own lines and those for auth.test and cdn.test are
// not.
func (s *hubSetup) isRequest(e logEntry) bool {
	return e.Msg == "request" && e.Host == s.up.Host
}

// isTag reports whether e is the access-log line of a request for img's
// manifest by its tag.
func (s *hubSetup) isTag(e logEntry, img hubImage) bool {
	return s.isRequest(e) && e.Kind == "manifest" && e.Repo == img.Repo && e.Ref == img.Tag
}

// AssertPulledDuringOutage checks what regproxy did for a pull of images
// during o, which the caller saw succeed with the right digests: no blob
// GET reached upstream, not even one the outage refused (it counts them
// all); every request for a tag of images was answered 200 from the
// expired record (STALE), at least one per image; and, when the client
// pings, which every client but ctr does, each ping was answered by
// regproxy itself (OFFLINE) and none was relayed.
func (s *hubSetup) AssertPulledDuringOutage(t *testing.T, o outage, what string, pings bool, images ...hubImage) {
	t.Helper()
	s.AssertNoBlobFetchesSince(t, o.blobs, what)
	for _, img := range images {
		if !s.d.waitLogged(o.skip, func(e logEntry) bool {
			return s.isTag(e, img) && e.Outcome == "STALE" && e.Status == http.StatusOK
		}) {
			t.Errorf(`%s: no "outcome":"STALE","status":200 line for %s:%s`, what, img.Repo, img.Tag)
		}
	}
	if pings && !s.d.waitLogged(o.skip, func(e logEntry) bool {
		return s.isRequest(e) && e.Kind == "ping" && e.Outcome == "OFFLINE" && e.Status == http.StatusOK
	}) {
		t.Errorf(`%s: no "outcome":"OFFLINE","status":200 line for the /v2/ ping`, what)
	}
	for _, e := range s.d.entries(o.skip) {
		switch {
		case !s.isRequest(e):
		case e.Kind == "ping" && (e.Outcome != "OFFLINE" || e.Status != http.StatusOK):
			t.Errorf("%s: the /v2/ ping was answered %s %d, want OFFLINE 200", what, e.Outcome, e.Status)
		case e.Kind == "manifest":
			for _, img := range images {
				if s.isTag(e, img) && (e.Outcome != "STALE" || e.Status != http.StatusOK) {
					t.Errorf("%s: %s %s:%s was answered %s %d, want STALE 200", what, e.Method, img.Repo, img.Tag, e.Outcome, e.Status)
				}
			}
		}
	}
}

// AssertMissFailedDuringOutage checks regproxy's side of a pull of img,
// which nothing cached, during o, which the caller saw fail: no blob GET
// reached upstream, and the tag got a 5xx, not a manifest.
func (s *hubSetup) AssertMissFailedDuringOutage(t *testing.T, o outage, what string, img hubImage) {
	t.Helper()
	s.AssertNoBlobFetchesSince(t, o.blobs, what)
	if !s.d.waitLogged(o.skip, func(e logEntry) bool { return s.isTag(e, img) }) {
		t.Errorf("%s: no access-log line for %s:%s", what, img.Repo, img.Tag)
	}
	for _, e := range s.d.entries(o.skip) {
		if s.isTag(e, img) && e.Status < http.StatusInternalServerError {
			t.Errorf("%s: %s %s:%s was answered %s %d, want a 5xx", what, e.Method, img.Repo, img.Tag, e.Outcome, e.Status)
		}
	}
}

// pushHubImages pushes the images every client test pulls to up: a public
// image, a private one and a public multi-arch index.
func pushHubImages(t *testing.T, up *testupstream.Upstream) *hubSetup {
	t.Helper()
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
	return s
}
