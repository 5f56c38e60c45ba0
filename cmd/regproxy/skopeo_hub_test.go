package main

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// TestSkopeoHubAndConfiguredCredentials pulls from the Docker-Hub-like
// upstream with an anonymous skopeo: public images as they are, also
// during a registry outage (but not an image the cache lacks), and the
// private image only when regproxy is configured with the hub account, in
// each of the three ways it can be.
func TestSkopeoHubAndConfiguredCredentials(t *testing.T) {
	t.Parallel()
	t.Run("anonymous", func(t *testing.T) {
		t.Parallel()
		s := newHubSetup(t, outageFlags...)
		uncached := s.pushUncached(t)
		sk := newSkopeo(t)
		sk.caFile = s.caFile
		skopeoHubPull(t, s, sk, s.Image)
		// --all copies the index as it is, so its digest must survive and
		// both instances' blobs go through regproxy. Without it skopeo
		// would copy only the runner's platform, making the test depend
		// on the machine it runs on.
		skopeoHubPull(t, s, sk, s.Index, "--all")

		blobs := s.BlobFetches()
		out, err := sk.hubCopy(t, s, s.PrivateImage.Ref(s))
		if err == nil {
			t.Fatalf("anonymous copy of %s without configured credentials succeeded, want an error", s.PrivateImage.Ref(s))
		}
		if !strings.Contains(strings.ToLower(out), "unauthorized") && !strings.Contains(out, "denied") {
			t.Errorf("anonymous copy of the private image failed, but not for want of access:\n%s", out)
		}
		s.AssertNoBlobFetchesSince(t, blobs, "refused private pull")

		// The copies above may have revalidated tags, which writes their
		// records again.
		o := s.beginOutage(t, time.Now().Add(outageTTL))
		for _, tc := range []struct {
			img   hubImage
			flags []string
		}{{s.Image, nil}, {s.Index, []string{"--all"}}} {
			dir := t.TempDir()
			if out, err := sk.hubCopy(t, s, tc.img.Ref(s), append(tc.flags, "dir:"+dir)...); err != nil {
				t.Fatalf("skopeo copy %s during the outage: %v\n%s", tc.img.Ref(s), err, out)
			}
			checkDirDigest(t, dir, tc.img.Digest)
		}
		s.AssertPulledDuringOutage(t, o, "skopeo copy during the outage", true, s.Image, s.Index)

		if out, err := sk.hubCopy(t, s, uncached.Ref(s)); err == nil {
			t.Errorf("skopeo copy %s, which is not cached, succeeded during the outage:\n%s", uncached.Ref(s), out)
		}
		s.AssertMissFailedDuringOutage(t, o, "skopeo copy of an uncached image during the outage", uncached)
	})

	// AUTH_REGISTRIES names a host without a port ("host:user:password");
	// regproxy's lookup falls back from host:port to host.
	for _, tc := range []struct {
		name      string
		configure func(t *testing.T, up *testupstream.Upstream) hubDaemonConfig
	}{
		{"--auth-registry", func(t *testing.T, up *testupstream.Upstream) hubDaemonConfig {
			return hubDaemonConfig{Flags: []string{"--auth-registry", up.Host + "=" + testupstream.HubUser + ":" + testupstream.HubPassword}}
		}},
		{"--auth-file", func(t *testing.T, up *testupstream.Upstream) hubDaemonConfig {
			return hubDaemonConfig{Flags: []string{"--auth-file", writeDockerConfig(t, up.Host)}}
		}},
		{"AUTH_REGISTRIES", func(t *testing.T, up *testupstream.Upstream) hubDaemonConfig {
			return hubDaemonConfig{Env: []string{"AUTH_REGISTRIES=registry.test:" + testupstream.HubUser + ":" + testupstream.HubPassword}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newHubSetupWith(t, tc.configure)
			sk := newSkopeo(t)
			sk.caFile = s.caFile
			basic := countBasicTokenRequests(s.up)
			skopeoHubPull(t, s, sk, s.PrivateImage)
			if s.up.Count("GET token") == 0 || basic.Load() == 0 {
				t.Errorf("token server: %d GETs, %d with the hub account's Basic auth; want both > 0",
					s.up.Count("GET token"), basic.Load())
			}
		})
	}
}

// skopeoHubPull copies img twice into fresh dir: images, checks the
// manifest digest and every blob, and fails if the second copy fetched a
// blob upstream or the CDN ever saw a token.
func skopeoHubPull(t *testing.T, s *hubSetup, sk *skopeo, img hubImage, flags ...string) {
	t.Helper()
	ref := img.Ref(s)
	for i := range 2 {
		before := s.BlobFetches()
		dir := t.TempDir()
		if out, err := sk.hubCopy(t, s, ref, append(append([]string(nil), flags...), "dir:"+dir)...); err != nil {
			t.Fatalf("skopeo copy %s: %v\n%s", ref, err, out)
		}
		checkDirDigest(t, dir, img.Digest)
		if i == 0 && s.BlobFetches() == before {
			t.Errorf("first copy of %s fetched no blob upstream: was it cached already?", ref)
		}
		if i == 1 {
			s.AssertNoBlobFetchesSince(t, before, "second skopeo copy of "+ref)
		}
	}
}

// hubCopy runs "skopeo copy docker://ref" with args (flags, then the
// destination; none means dir: in a fresh directory) through s's regproxy,
// in the sealed environment of skopeo.command, and returns skopeo's output and
// error instead of failing.
func (sk *skopeo) hubCopy(t *testing.T, s *hubSetup, ref string, args ...string) (string, error) {
	t.Helper()
	if len(args) == 0 {
		args = []string{"dir:" + t.TempDir()}
	}
	cmd, cancel := sk.command(t, s.ProxyURL(), append([]string{"copy", "--retry-times", "0", "docker://" + ref}, args...)...)
	defer cancel()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// checkDirDigest checks that a dir: image's manifest.json has digest want,
// then checks the blobs it names (for a list, those of each instance that
// skopeo wrote beside it).
func checkDirDigest(t *testing.T, dir, want string) {
	t.Helper()
	got := readChecked(t, filepath.Join(dir, "manifest.json"), want)
	var list struct{ Manifests []struct{ Digest string } }
	if err := json.Unmarshal(got, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Manifests) == 0 {
		checkDir(t, dir, got)
		return
	}
	for _, m := range list.Manifests {
		hexDigest := strings.TrimPrefix(m.Digest, "sha256:")
		instance := t.TempDir()
		b := readChecked(t, filepath.Join(dir, hexDigest+".manifest.json"), m.Digest)
		// checkDir reads manifest.json and the blobs beside it.
		if err := os.WriteFile(filepath.Join(instance, "manifest.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		linkBlobs(t, dir, instance)
		checkDir(t, instance, b)
	}
}

// linkBlobs makes the blob files of dir visible in instance.
func linkBlobs(t *testing.T, dir, instance string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if len(e.Name()) == 64 { // a blob, named by its hex digest
			if err := os.Symlink(filepath.Join(dir, e.Name()), filepath.Join(instance, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// writeDockerConfig writes a docker config.json holding the hub account
// for host, as docker login would.
func writeDockerConfig(t *testing.T, host string) string {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(testupstream.HubUser + ":" + testupstream.HubPassword))
	b, err := json.Marshal(map[string]any{"auths": map[string]any{host: map[string]string{"auth": auth}}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// countBasicTokenRequests counts, from now on, the token requests that
// carry the hub account in Basic auth: only regproxy has it, so each one
// is regproxy answering a challenge for an anonymous client.
func countBasicTokenRequests(up *testupstream.Upstream) *atomic.Int64 {
	var n atomic.Int64
	up.SetFault(func(_ http.ResponseWriter, r *http.Request) bool {
		if user, pass, ok := r.BasicAuth(); ok && testupstream.Kind(r) == "GET token" &&
			user == testupstream.HubUser && pass == testupstream.HubPassword {
			n.Add(1)
		}
		return false
	})
	return &n
}
