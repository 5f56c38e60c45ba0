package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// skopeoTimeout bounds one skopeo run.
const skopeoTimeout = 2 * time.Minute

// TestSkopeoPull pulls an image with skopeo through the regproxy binary
// twice: the first pull fills the cache from the upstream, the second is
// served from it, which the upstream's counters and the access log prove.
func TestSkopeoPull(t *testing.T) {
	t.Parallel()
	sk := newSkopeo(t)
	up := testupstream.Start(t)
	img := up.RandomImage(t, 2, 64<<10)
	up.Push(t, "e2e/app", "v1", img)
	wantManifest, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--registries", "registry.test", "--resolve", up.Resolve(), "--upstream-ca", up.CAFile)
	sk.trust(t, d)
	ref := "docker://" + up.Host + "/e2e/app:v1"

	blobs := checkDir(t, sk.copy(t, d, ref), wantManifest)
	if got := up.Count("GET blob"); got != 3 {
		t.Errorf(`first pull: upstream Count("GET blob") = %d, want 3 (config and 2 layers)`, got)
	}
	for _, b := range blobs {
		if !d.waitLogged(0, func(e logEntry) bool { return e.Ref == b && strings.HasPrefix(e.Outcome, "MISS") }) {
			t.Errorf("first pull: no MISS line for blob %s", b)
		}
	}

	manifests := up.Count("GET manifest") + up.Count("HEAD manifest")
	skip := d.lines()
	checkDir(t, sk.copy(t, d, ref), wantManifest)
	if got := up.Count("GET blob"); got != 3 {
		t.Errorf(`second pull: upstream Count("GET blob") = %d, want still 3`, got)
	}
	if got := up.Count("GET manifest") + up.Count("HEAD manifest"); got != manifests {
		t.Errorf("second pull: upstream manifest requests = %d, want still %d (within --manifest-ttl)", got, manifests)
	}
	for _, b := range blobs {
		if !d.waitLogged(skip, func(e logEntry) bool { return e.Ref == b && e.Outcome == "HIT" && e.Status == http.StatusOK }) {
			t.Errorf(`second pull: no "outcome":"HIT" line for blob %s`, b)
		}
	}
}

// skopeo runs skopeo in a sealed environment: no registries.conf, no
// credentials, no signature lookaside, an accept-anything policy, and TLS
// roots that hold only what trust installs.
type skopeo struct {
	path, dir string
	policy    string
	caFile    string // regproxy's CA, the only root
}

// newSkopeo fails, never skips, when skopeo is missing: a skipped
// end-to-end test is a silent pass.
func newSkopeo(t *testing.T) *skopeo {
	t.Helper()
	path, err := exec.LookPath("skopeo")
	if err != nil {
		t.Fatal("skopeo missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	s := &skopeo{path: path, dir: t.TempDir()}
	s.policy = s.write(t, "policy.json", `{"default":[{"type":"insecureAcceptAnything"}]}`)
	s.write(t, "registries.conf", "")
	for _, sub := range []string{"home", "certs", "registries.d", "tmp"} {
		if err := os.Mkdir(filepath.Join(s.dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s *skopeo) write(t *testing.T, name, content string) string {
	t.Helper()
	file := filepath.Join(s.dir, name)
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// trust installs the CA that d serves at /ca.crt, as a node would.
func (s *skopeo) trust(t *testing.T, d *daemon) {
	t.Helper()
	code, pem, err := d.get("/ca.crt")
	if err != nil || code != http.StatusOK || !strings.Contains(string(pem), "BEGIN CERTIFICATE") {
		t.Fatalf("GET /ca.crt: %d %q %v; want 200 and a PEM certificate", code, pem, err)
	}
	s.caFile = s.write(t, "regproxy-ca.crt", string(pem))
}

// copy copies ref through d into a fresh dir: directory and returns it.
func (s *skopeo) copy(t *testing.T, d *daemon, ref string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "image")
	s.run(t, d, "copy", "--retry-times", "0", ref, "dir:"+out)
	return out
}

// run runs skopeo with args through d and fails the test if it fails.
func (s *skopeo) run(t *testing.T, d *daemon, args ...string) {
	t.Helper()
	cmd, cancel := s.command(t, "http://"+d.addr, args...)
	defer cancel()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, b)
	}
}

// command returns skopeo with args, in the sealed environment, with proxy
// as its HTTPS_PROXY, bounded by skopeoTimeout. Call cancel once it ran.
func (s *skopeo) command(t *testing.T, proxy string, args ...string) (*exec.Cmd, context.CancelFunc) {
	cmd, cancel := timedCmd(t.Context(), skopeoTimeout, s.path, append([]string{"--policy", s.policy,
		"--registries.d", filepath.Join(s.dir, "registries.d"), "--tmpdir", filepath.Join(s.dir, "tmp")}, args...)...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + filepath.Join(s.dir, "home"),
		"HTTPS_PROXY=" + proxy,
		"NO_PROXY=",
		"SSL_CERT_FILE=" + s.caFile,
		"SSL_CERT_DIR=" + filepath.Join(s.dir, "certs"), // empty: no system roots
		"CONTAINERS_REGISTRIES_CONF=" + filepath.Join(s.dir, "registries.conf"),
		"REGISTRY_AUTH_FILE=" + filepath.Join(s.dir, "auth.json"), // absent: anonymous
	}
	return cmd, cancel
}

// checkDir checks a dir: image against the pushed manifest and every blob
// against its digest, and returns the blob digests.
func checkDir(t *testing.T, dir string, wantManifest []byte) []string {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(wantManifest) {
		t.Errorf("manifest.json = %s, want %s", got, wantManifest)
	}
	var m struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(got, &m); err != nil {
		t.Fatal(err)
	}
	blobs := []string{m.Config.Digest}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest)
	}
	for _, b := range blobs {
		hexDigest, ok := strings.CutPrefix(b, "sha256:")
		if !ok {
			t.Fatalf("blob digest %q: want sha256", b)
		}
		data, err := os.ReadFile(filepath.Join(dir, hexDigest))
		if err != nil {
			t.Error(err)
			continue
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != hexDigest {
			t.Errorf("blob file %s has sha256 %x", hexDigest, sum)
		}
	}
	return blobs
}
