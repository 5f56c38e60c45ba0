package main

import "testing"

// TestContainerdMirrorPull pulls a single-platform image and a multi-arch
// index with ctr through regproxy's plain-HTTP mirror port, configured
// only by the hosts.toml files setup-containerd.sh --mirror wrote: ctr
// --hosts-dir is the root's /etc/containerd/certs.d, where CRI reads them
// on a node. No proxy, no CA. containerd names the registry with ?ns= on
// every request to a mirror, here registry.test:PORT. ctr falls back to
// the registry itself when the mirror fails, and it cannot reach
// registry.test, so what it pulls came through the mirror.
//
//  1. The first pull uses the hosts.toml the script wrote for the
//     registry (--registries registry.test:PORT, so certs.d/
//     registry.test_PORT_).
//  2. After the content store is emptied, the second uses the one it
//     wrote under _default (--registries _default): no blob is fetched
//     upstream, and every blob the first pull fetched is a HIT through
//     the mirror.
//  3. After it is emptied again, the third pull goes through the proxy
//     port (HTTPS_PROXY and regproxy's CA), as TestContainerdPull's do:
//     the blobs the mirror cached are HITs there too.
func TestContainerdMirrorPull(t *testing.T) {
	t.Parallel()
	c := startContainerd(t)
	s := newMirrorSetup(t, "registry.test")
	const hostsDir = "etc/containerd/certs.d"
	perRegistry := mirrorRoot(t, "setup-containerd.sh", "http://"+s.mirror, "--registries", s.up.Host).path(hostsDir)
	underDefault := mirrorRoot(t, "setup-containerd.sh", "http://"+s.mirror, "--registries", "_default").path(hostsDir)
	images := []hubImage{s.Image, s.Index}

	c.pullAllVia(t, s, images, "--hosts-dir", perRegistry)
	before := s.BlobFetches()
	if before == 0 {
		t.Fatal("first pull: no blob fetches upstream; the next pulls would prove nothing")
	}
	missed := s.loggedBlobs(0, "MISS")
	s.assertFront(t, 0, "containerd first pull through the mirror", s.up.Host, "mirror", "MISS", missed)

	c.clear(t, s.hubSetup, images)
	skip := s.d.lines()
	c.pullAllVia(t, s, images, "--hosts-dir", underDefault)
	s.AssertNoBlobFetchesSince(t, before, "containerd second pull through the mirror (_default)")
	s.assertFront(t, skip, "containerd second pull through the mirror (_default)", s.up.Host, "mirror", "HIT", missed)

	c.clear(t, s.hubSetup, images)
	skip = s.d.lines()
	c.pullAll(t, s.hubSetup, images)
	s.AssertNoBlobFetchesSince(t, before, "containerd pull through the proxy port after the mirror's")
	s.assertFront(t, skip, "containerd pull through the proxy port after the mirror's", s.up.Host, "proxy", "HIT", missed)
}

// pullAllVia pulls each image for linux/amd64 with ctr's extra flags
// (--hosts-dir DIR) and nothing in its environment, and checks what
// containerd recorded, as pullAll does.
func (c *containerd) pullAllVia(t *testing.T, s *mirrorSetup, images []hubImage, flags ...string) {
	t.Helper()
	for _, img := range images {
		ref := img.Ref(s.hubSetup)
		args := append([]string{"images", "pull"}, flags...)
		c.mustRun(t, ctrPullTimeout, nil, append(args, "--snapshotter", "native", "--platform", "linux/amd64", ref)...)
		got := c.check(t, ref)
		if got.digest != img.Digest || !got.complete || !got.unpacked {
			t.Errorf("ctr images check %s: digest %s, complete %v, unpacked %v; want %s, complete and unpacked\n%s",
				ref, got.digest, got.complete, got.unpacked, img.Digest, got.line)
		}
	}
}
