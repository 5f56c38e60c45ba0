package main

import (
	"strings"
	"testing"
)

// TestDockerdMirrorPull pulls a Docker Hub image and a multi-arch index
// with a real dockerd whose only configuration for it is the daemon.json
// that setup-docker.sh --mirror wrote, whose registry-mirrors names
// regproxy's plain-HTTP mirror port: no proxy, no CA. The upstream plays registry-1.docker.io, which is where
// requests that name no registry go. dockerd's own way to Docker Hub
// leads nowhere (its HTTPS_PROXY is a dead port), so the images can only
// have come through the mirror. After dockerd's store is emptied, a
// second pull must fetch no blob upstream, and every blob the first pull
// fetched is a HIT through the mirror. (dockerd keeps the manifests it
// pulled in a store of its own, which rmi leaves alone, so it may not ask
// for them again.)
func TestDockerdMirrorPull(t *testing.T) {
	t.Parallel()
	bin, cli := lookDocker(t)
	s := newMirrorSetup(t, "registry-1.docker.io")
	n := mirrorRoot(t, "setup-docker.sh", "http://"+s.mirror)
	dk := startDockerdConfig(t, bin, cli, []string{
		"HTTPS_PROXY=http://127.0.0.1:9", "HTTP_PROXY=http://127.0.0.1:9", "NO_PROXY=", "no_proxy=",
	}, n.path("etc/docker/daemon.json"))
	images := []hubImage{s.Image, s.Index}

	for _, img := range images {
		dk.pullHub(t, img)
	}
	before := s.BlobFetches()
	if before == 0 {
		t.Fatal("first pull: no blob fetches upstream; the second pull would prove nothing")
	}
	missed := s.loggedBlobs(0, "MISS")
	dk.removeHub(t, images)

	skip := s.d.lines()
	for _, img := range images {
		if out := dk.pullHub(t, img); strings.Contains(out, "Already exists") {
			t.Errorf("second pull of %s reused local layers:\n%s", img.Repo, out)
		}
	}
	s.AssertNoBlobFetchesSince(t, before, "dockerd second pull through the mirror")
	s.assertFront(t, skip, "dockerd second pull through the mirror", "registry-1.docker.io:443", "mirror", "HIT", missed)
}

// pullHub pulls img as a Docker Hub image ("public/app:v1", no registry)
// and checks the digest dockerd reports and records.
func (dk *dockerd) pullHub(t *testing.T, img hubImage) string {
	t.Helper()
	return dk.pullRef(t, img.Repo+":"+img.Tag, img.Repo+"@"+img.Digest, img.Digest)
}

// removeHub empties dockerd's image store of images, pulled by pullHub.
func (dk *dockerd) removeHub(t *testing.T, images []hubImage) {
	t.Helper()
	refs := make([]string, 0, len(images))
	for _, img := range images {
		refs = append(refs, img.Repo+":"+img.Tag)
	}
	dk.removeRefs(t, refs)
}
