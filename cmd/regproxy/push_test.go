package main

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// TestSkopeoCopyIntoNewRepository copies, with skopeo through the regproxy
// binary, an image whose layers the cache holds into a repository that
// lacks them. skopeo HEADs each blob in the destination first: regproxy
// must answer as upstream does (404), or skopeo skips the uploads and the
// copy is missing its layers upstream. The copy is then pulled straight
// from upstream.
func TestSkopeoCopyIntoNewRepository(t *testing.T) {
	t.Parallel()
	sk := newSkopeo(t)
	up := testupstream.Start(t, testupstream.WithRepoScopedBlobs())
	img := up.RandomImage(t, 2, 64<<10)
	up.Push(t, "test/app", "v1", img)
	d := startDaemon(t, "--registries", "registry.test", "--resolve", up.Resolve(), "--upstream-ca", up.CAFile)
	sk.trust(t, d)
	src := "docker://" + up.Host + "/test/app:v1"
	sk.copy(t, d, src) // the cache now holds every blob

	sk.run(t, d, "copy", "--retry-times", "0", src, "docker://"+up.Host+"/test/copied2:v1")
	ref, err := name.ParseReference(up.Host + "/test/copied2:v1")
	if err != nil {
		t.Fatal(err)
	}
	copied, err := remote.Image(ref, remote.WithTransport(up.Transport()))
	if err != nil {
		t.Fatalf("pull the copy straight from upstream: %v", err)
	}
	layers, err := copied.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, _ := l.Digest()
		if !up.Holds("test/copied2", d.String()) {
			t.Errorf("upstream's test/copied2 lacks layer %s after skopeo copy", d)
		}
	}
}
