package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// curlTimeout bounds one curl run.
const curlTimeout = time.Minute

// curlAccept is the Accept header enroot sends for a manifest: single
// manifests and, so that it can pick its platform, lists and indexes.
const curlAccept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, " +
	"application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json"

// TestCurlPull pulls the way enroot does, with curl and https_proxy:
//
//  1. GET /v2/ is answered 401 with a Bearer challenge;
//  2. a HEAD of the manifest gives the challenge with the scope, and the
//     token comes from its realm (auth.test, intercepted too);
//  3. the manifest is fetched with the token and Accept; a list or index
//     is resolved to its linux/amd64 manifest by digest;
//  4. each blob is fetched with -L, and regproxy, which follows the CDN
//     redirect itself, answers 200 directly.
//
// Every body is checked against its digest. Each image is pulled twice,
// as enroot on two nodes would, each with a token of its own: the second
// pull must fetch no blob upstream. Last, both images are pulled again
// during a registry outage, past --manifest-ttl (see outagePull).
//
// A client that sends no token gets a stale copy only from a repository
// regproxy found open; the first pull's tag GET with a token makes it ask
// upstream without credentials. Once it knows, a HEAD without a token is
// answered from the cache with no challenge, and the second pull goes
// without a token, as enroot does then.
func TestCurlPull(t *testing.T) {
	t.Parallel()
	s := newHubSetup(t, outageFlags...)
	c := newCurl(t, s)
	for _, tc := range []struct {
		img   hubImage
		blobs int // config and layers of the (linux/amd64) image
	}{{s.Image, 4}, {s.Index, 3}} {
		img := tc.img
		for pull := range 2 {
			before := s.BlobFetches()
			c.ping(t, s)
			token := c.token(t, s, img)
			blobs := c.manifest(t, s, img, token, img.Tag, img.Digest)
			if len(blobs) != tc.blobs {
				t.Errorf("%s: %d blobs, want %d", img.Repo, len(blobs), tc.blobs)
			}
			for _, b := range blobs {
				c.blob(t, s, img, token, b)
			}
			if pull == 1 {
				s.AssertNoBlobFetchesSince(t, before, "second curl pull of "+img.Repo)
			}
		}
	}

	o := s.beginOutage(t, time.Now().Add(outageTTL))
	for _, img := range []hubImage{s.Image, s.Index} {
		c.outagePull(t, s, img)
	}
	s.AssertPulledDuringOutage(t, o, "curl pull during the outage", true, s.Image, s.Index)
}

// outagePull pulls img the same way during an outage, when the token
// server answers 503 too. regproxy answers the ping itself (200, no
// challenge), and the HEAD of the manifest, which enroot sends first
// without a token, gets the cached manifest's headers and no challenge:
// enroot then asks for no token ("Permission granted") and fetches the
// manifest and the blobs without one.
func (c *curl) outagePull(t *testing.T, s *hubSetup, img hubImage) {
	t.Helper()
	code := c.run(t, "GET /v2/ during the outage", "-o", c.file("ping.body"), "-D", c.file("ping.headers"),
		"-w", "%{http_code}", "https://"+s.up.Host+"/v2/")
	if ch := curlHasChallenge(t, c.file("ping.headers")); code != "200" || ch {
		t.Fatalf("GET /v2/ during the outage: %s, challenge %v; want 200 and none (regproxy answers it)", code, ch)
	}
	code = c.run(t, "HEAD manifest during the outage", "-I", "-o", c.file("head.headers"), "-w", "%{http_code}",
		"-H", "Accept: "+curlAccept, "https://"+s.up.Host+"/v2/"+img.Repo+"/manifests/"+img.Tag)
	if ch := curlHasChallenge(t, c.file("head.headers")); code != "200" || ch {
		t.Fatalf("HEAD %s:%s during the outage: %s, challenge %v; want 200 and none", img.Repo, img.Tag, code, ch)
	}
	for _, b := range c.manifest(t, s, img, "", img.Tag, img.Digest) {
		c.blob(t, s, img, "", b)
	}
}

// curl runs the curl binary with regproxy as https_proxy and regproxy's CA
// as its only root: --capath names an empty directory, so that the
// distribution's default CA path adds nothing.
type curl struct {
	path string
	dir  string // response headers and bodies
	env  []string
	args []string // given to every run, first
}

// newCurl fails, never skips, when curl is missing.
func newCurl(t *testing.T, s *hubSetup) *curl {
	t.Helper()
	path, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	return &curl{
		path: path,
		dir:  t.TempDir(),
		env: []string{
			"PATH=" + os.Getenv("PATH"),
			"HOME=" + t.TempDir(),
			"https_proxy=" + s.ProxyURL(), // what enroot.conf sets
			"no_proxy=",
		},
		// -q (first) ignores any .curlrc; CONNECT's own "200 Connection
		// established" is kept out of the header dumps.
		args: []string{"-q", "-sS", "--cacert", s.caFile, "--capath", t.TempDir(),
			"--suppress-connect-headers", "--max-time", "60"},
	}
}

// run runs curl with args and returns its standard output. The message of
// a failure names what, not the arguments, which may hold a token.
func (c *curl) run(t *testing.T, what string, args ...string) string {
	t.Helper()
	cmd, cancel := timedCmd(t.Context(), curlTimeout, c.path, append(append([]string(nil), c.args...), args...)...)
	defer cancel()
	cmd.Env = c.env
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("curl %s: %v\n%s", what, err, stderr)
	}
	return string(out)
}

// file returns the path of a scratch file.
func (c *curl) file(name string) string { return filepath.Join(c.dir, name) }

// ping checks step 1: GET /v2/ without a token is 401 with a Bearer
// challenge whose realm is the hub's token server.
func (c *curl) ping(t *testing.T, s *hubSetup) {
	t.Helper()
	code := c.run(t, "GET /v2/", "-o", c.file("ping.body"), "-D", c.file("ping.headers"),
		"-w", "%{http_code}", "https://"+s.up.Host+"/v2/")
	if code != "401" {
		t.Fatalf("GET /v2/ without a token: %s, want 401", code)
	}
	ch := curlChallenge(t, c.file("ping.headers"))
	if want := "https://" + s.up.AuthHost() + "/token"; ch["realm"] != want {
		t.Errorf("GET /v2/ challenge realm %q, want %q", ch["realm"], want)
	}
}

// token runs step 2 for img's repository and returns the token.
func (c *curl) token(t *testing.T, s *hubSetup, img hubImage) string {
	t.Helper()
	c.run(t, "HEAD manifest without a token", "-I", "-o", c.file("head.headers"), "-H", "Accept: "+curlAccept,
		"https://"+s.up.Host+"/v2/"+img.Repo+"/manifests/"+img.Tag)
	if !curlHasChallenge(t, c.file("head.headers")) {
		// regproxy found the repository open and served the HEAD from its
		// cache: enroot then asks for no token ("Permission granted").
		return ""
	}
	ch := curlChallenge(t, c.file("head.headers"))
	if want := "repository:" + img.Repo + ":pull"; ch["scope"] != want {
		t.Fatalf("challenge scope %q, want %q", ch["scope"], want)
	}
	body := c.run(t, "GET token", "-f", "-G", "--data-urlencode", "service="+ch["service"],
		"--data-urlencode", "scope="+ch["scope"], ch["realm"])
	var tok struct{ Token string }
	if err := json.Unmarshal([]byte(body), &tok); err != nil || tok.Token == "" {
		t.Fatalf("token response %.200q: %v", body, err)
	}
	return tok.Token
}

// challengeParam matches one auth-param of a challenge (RFC 9110, section
// 11.2) in its quoted form, the only one the hub sends.
var challengeParam = regexp.MustCompile(`([a-z]+)="([^"]*)"`)

// curlChallenge reads the Bearer challenge from a header dump, as enroot
// does with awk.
func curlChallenge(t *testing.T, headerFile string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(headerFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		name, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.EqualFold(name, "WWW-Authenticate") {
			continue
		}
		scheme, params, _ := strings.Cut(strings.TrimSpace(value), " ")
		if !strings.EqualFold(scheme, "Bearer") {
			t.Fatalf("challenge %q: want Bearer", value)
		}
		ch := map[string]string{}
		for _, m := range challengeParam.FindAllStringSubmatch(params, -1) {
			ch[m[1]] = m[2]
		}
		return ch
	}
	t.Fatalf("no WWW-Authenticate in:\n%s", b)
	return nil
}

// bearer returns the arguments that make curl send token, none for ""
// (a pull that needs no token).
func bearer(token string) []string {
	if token == "" {
		return nil
	}
	return []string{"-H", "Authorization: Bearer " + token}
}

// curlHasChallenge reports whether a header dump holds a WWW-Authenticate
// header, which is what enroot looks for.
func curlHasChallenge(t *testing.T, headerFile string) bool {
	t.Helper()
	b, err := os.ReadFile(headerFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if name, _, ok := strings.Cut(line, ":"); ok && strings.EqualFold(strings.TrimSpace(name), "WWW-Authenticate") {
			return true
		}
	}
	return false
}

// manifest runs step 3: it GETs img's manifest at ref with token (none if
// ""), checks it against want (a digest), and returns the blobs it names.
// A list or index is resolved to its linux/amd64 instance, as enroot does.
func (c *curl) manifest(t *testing.T, s *hubSetup, img hubImage, token, ref, want string) []string {
	t.Helper()
	file := c.file("manifest.json")
	c.run(t, "GET manifest "+ref, slices.Concat([]string{"-f", "-o", file, "-D", c.file("manifest.headers")},
		bearer(token), []string{"-H", "Accept: " + curlAccept,
			"https://" + s.up.Host + "/v2/" + img.Repo + "/manifests/" + url.PathEscape(ref)})...)
	body := readChecked(t, file, want)
	var m struct {
		MediaType string
		Config    struct{ Digest string }
		Layers    []struct{ Digest string }
		Manifests []struct {
			Digest   string
			Platform struct{ OS, Architecture string }
		}
	}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("manifest %s: %v", ref, err)
	}
	for _, child := range m.Manifests {
		if child.Platform.OS == "linux" && child.Platform.Architecture == "amd64" {
			return c.manifest(t, s, img, token, child.Digest, child.Digest)
		}
	}
	if len(m.Manifests) > 0 || m.Config.Digest == "" {
		t.Fatalf("manifest %s (%s): no linux/amd64 image in it", ref, m.MediaType)
	}
	blobs := []string{m.Config.Digest}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest)
	}
	return blobs
}

// blob runs step 4 for one blob, with token (none if ""): 200 with no
// redirect seen by curl, and the digest checked.
func (c *curl) blob(t *testing.T, s *hubSetup, img hubImage, token, digest string) {
	t.Helper()
	file := c.file("blob")
	got := c.run(t, "GET blob "+digest, slices.Concat([]string{"-f", "-L", "-o", file, "-w", "%{http_code} %{num_redirects}"},
		bearer(token), []string{"https://" + s.up.Host + "/v2/" + img.Repo + "/blobs/" + digest})...)
	if got != "200 0" {
		t.Errorf("GET blob %s: status and redirects %q, want \"200 0\" (regproxy follows the CDN redirect)", digest, got)
	}
	readChecked(t, file, digest)
}

// readChecked reads file and checks its sha256 against want.
func readChecked(t *testing.T, file, want string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(b); "sha256:"+hex.EncodeToString(sum[:]) != want {
		t.Errorf("body for %s has sha256 %x", want, sum)
	}
	return b
}
