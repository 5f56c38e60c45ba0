package proxy_test

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// TestCopyIntoNewRepositoryThroughProxy follows crane copy: the push
// client HEADs each blob in the new repository and uploads what is
// missing. The cache holds every layer, but the new repository does not,
// so regproxy must answer those HEADs as upstream does (404), or the
// manifest PUT names blobs the repository lacks.
func TestCopyIntoNewRepositoryThroughProxy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testupstream.WithRepoScopedBlobs())
	img := e.up.RandomImage(t, 2, 10000)
	e.up.Push(t, "test/app", "v1", img)
	e.pull("test/app", "v1") // the cache now holds every blob

	src, err := remote.Image(e.ref(t, "test/app:v1"), remote.WithTransport(e.transport()))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(e.ref(t, "test/copied:v1"), src, remote.WithTransport(e.transport())); err != nil {
		t.Fatalf("copy into a new repository through regproxy: %v", err)
	}
	direct, err := remote.Image(e.ref(t, "test/copied:v1"), remote.WithTransport(e.up.Transport()))
	if err != nil {
		t.Fatalf("pull the copy straight from upstream: %v", err)
	}
	readAllBlobs(t, direct)
	for _, b := range blobsOf(t, img) {
		if !e.up.Holds("test/copied", b.String()) {
			t.Errorf("upstream's test/copied lacks %s after the copy", b)
		}
	}
}

// TestPushedTagIsPulledAtOnce: a tag pushed through regproxy is what the
// next pull through it gets, however fresh the cached record of the tag.
func TestPushedTagIsPulledAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testupstream.WithRepoScopedBlobs())
	e.up.Push(t, "test/app", "v1", e.up.RandomImage(t, 1, 1000))
	e.pull("test/app", "v1")

	next := e.up.RandomImage(t, 1, 1000)
	if err := remote.Write(e.ref(t, "test/app:v1"), next, remote.WithTransport(e.transport())); err != nil {
		t.Fatalf("push through regproxy: %v", err)
	}
	want, _ := next.Digest()
	if got := e.pull("test/app", "v1"); got != want {
		t.Fatalf("pull right after a push through regproxy: %s; want the pushed %s", got, want)
	}
}

func (e *env) ref(t *testing.T, repoTag string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(e.up.Host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}
