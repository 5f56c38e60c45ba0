package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestPodmanMirrorPull pulls with rootful podman through regproxy's
// plain-HTTP mirror port, configured only by the registries.conf drop-in
// setup-podman.sh --mirror wrote, whose mirror location puts the registry
// in the path ("MIRROR/registry.test"), as for CRI-O: no proxy, no CA.
// podman reads it as a drop-in, from a registries.conf.d directory, over
// the harness's empty registries.conf. A path prefix cannot carry a port,
// so the images are named registry.test/… and regproxy reaches the
// registry on 443 (--resolve).
//
//  1. The single-platform image is pulled through the proxy port
//     (HTTPS_PROXY and regproxy's CA), as TestPodmanPull does.
//  2. Both images are pulled through the mirror: the first image's blobs
//     are HITs, cached by the proxy port; the index's are fetched.
//  3. After the store is emptied, both are pulled through the mirror
//     again: no blob is fetched upstream, and every blob is a HIT.
func TestPodmanMirrorPull(t *testing.T) {
	t.Parallel()
	s := newMirrorSetup(t, "registry.test")
	p := newPodman(t, s.hubSetup)
	viaProxy := p
	n := mirrorRoot(t, "setup-podman.sh", "http://"+s.mirror, "--registries", "registry.test")
	viaMirror := p.withEnv(mirrorEnv(t, p, n.path("etc/containers/registries.conf.d")))
	const host = "registry.test:443"

	viaProxy.pullNamed(t, "registry.test", s.Image)
	cached := s.loggedBlobs(0, "MISS")
	p.clear(t)
	before, skip := s.BlobFetches(), s.d.lines()
	viaMirror.pullNamed(t, "registry.test", s.Image, s.Index)
	s.assertFront(t, skip, "podman pull through the mirror after the proxy port's", host, "mirror", "HIT", cached)
	if got := s.up.Count("GET blob") + s.up.CountHost("cdn.test") - before; got == 0 {
		t.Error("podman pull of the index through the mirror fetched no blob upstream; the second pull would prove nothing")
	}

	all := s.loggedBlobs(0, "MISS")
	p.clear(t)
	before, skip = s.BlobFetches(), s.d.lines()
	viaMirror.pullNamed(t, "registry.test", s.Image, s.Index)
	s.AssertNoBlobFetchesSince(t, before, "podman second pull through the mirror")
	s.assertFront(t, skip, "podman second pull through the mirror", host, "mirror", "HIT", all)
}

// mirrorEnv is p's environment for pulls through a registries.conf
// mirror: no proxy or CA, and a home of its own whose
// ~/.config/containers/registries.conf.d links to the files of dropins.
// containers/image reads that directory's drop-ins as it reads those of
// /etc/containers/registries.conf.d, after the registries.conf that
// CONTAINERS_REGISTRIES_CONF names (the harness's, empty). It links each
// file rather than the directory: it walks the directory without
// following a link to it. The home is not p's, which the pulls through
// the proxy port use.
func mirrorEnv(t *testing.T, p *podman, dropins string) []string {
	t.Helper()
	home := p.sub("mirror-home")
	dir := filepath.Join(home, ".config", "containers", "registries.conf.d")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(dropins, "*.conf"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no drop-in in %s (%v)", dropins, err)
	}
	for _, f := range files {
		if err := os.Symlink(f, filepath.Join(dir, filepath.Base(f))); err != nil {
			t.Fatal(err)
		}
	}
	out := slices.DeleteFunc(slices.Clone(p.env), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "SSL_CERT_FILE", "HOME":
			return true
		}
		return false
	})
	return append(out, "HOME="+home)
}

// withEnv is p with another environment, sharing its storage.
func (p *podman) withEnv(env []string) *podman {
	q := *p
	q.env = env
	return &q
}

// pullNamed pulls images for linux/amd64 by the name registry/REPO:TAG
// and checks the digest and platform podman recorded for each. It leaves
// TLS verification to registries.conf, whose insecure mirror podman then
// speaks plain HTTP to.
func (p *podman) pullNamed(t *testing.T, registry string, images ...hubImage) {
	t.Helper()
	for _, img := range images {
		ref := registry + "/" + img.Repo + ":" + img.Tag
		p.run(t, podmanPullTimeout, "pull", "--cert-dir", p.sub("certs"),
			"--signature-policy", p.sub("policy.json"), "--platform", "linux/amd64", ref)
		got := strings.TrimSpace(p.run(t, podmanTimeout, "image", "inspect",
			"--format", "{{.Digest}} {{.Os}}/{{.Architecture}}", ref))
		if want := img.Digest + " linux/amd64"; got != want {
			t.Errorf("podman image inspect %s: %q, want %q", ref, got, want)
		}
	}
}
