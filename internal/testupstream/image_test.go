package testupstream

import (
	"archive/tar"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func pullOptions(t *testing.T, u *Upstream) []remote.Option {
	return []remote.Option{remote.WithTransport(u.Transport()), remote.WithAuth(authn.Anonymous), remote.WithContext(t.Context())}
}

func TestRunnableImage(t *testing.T) {
	t.Parallel()
	u := Start(t, WithHub())
	img := u.RunnableImage(t, 3)
	u.Push(t, "public/run", "v1", img)
	ref, _ := name.NewTag(u.Host + "/public/run:v1")
	got, err := remote.Image(ref, pullOptions(t, u)...)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if d, _ := got.Digest(); d != want {
		t.Errorf("digest = %s, want %s", d, want)
	}
	if mt, _ := got.MediaType(); mt != types.DockerManifestSchema2 {
		t.Errorf("media type = %s, want %s", mt, types.DockerManifestSchema2)
	}
	cfg, err := got.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" || len(cfg.Config.Cmd) == 0 || len(cfg.RootFS.DiffIDs) != 3 {
		t.Errorf("config = %s/%s Cmd %q, %d diff IDs, want linux/amd64, a Cmd and 3", cfg.OS, cfg.Architecture, cfg.Config.Cmd, len(cfg.RootFS.DiffIDs))
	}
	layers, _ := got.Layers()
	for i, l := range layers {
		if mt, _ := l.MediaType(); mt != types.DockerLayer {
			t.Errorf("layer %d media type = %s, want %s", i, mt, types.DockerLayer)
		}
		rc, err := l.Uncompressed() // gunzip; the registry's bytes are checked against the digest
		if err != nil {
			t.Fatal(err)
		}
		names := tarNames(t, rc)
		if want := "etc/hello-" + string(rune('1'+i)) + ".txt"; !slices.Contains(names, want) {
			t.Errorf("layer %d holds %q, want %s", i, names, want)
		}
	}
	if a, b := u.RunnableImage(t, 1), u.RunnableImage(t, 1); digestOf(a) == digestOf(b) {
		t.Errorf("two RunnableImage calls made the same digest %s", digestOf(a))
	}
}

func digestOf(img v1.Image) v1.Hash { d, _ := img.Digest(); return d }

func tarNames(t *testing.T, rc io.ReadCloser) []string {
	t.Helper()
	defer rc.Close()
	var names []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatalf("read layer tar: %v", err)
		}
		names = append(names, h.Name)
	}
}

func TestMultiArchIndex(t *testing.T) {
	t.Parallel()
	u := Start(t, WithHub())
	idx := u.MultiArchIndex(t)
	u.PushIndex(t, "public/multi", "v1", idx)
	ref, _ := name.NewTag(u.Host + "/public/multi:v1")
	got, err := remote.Index(ref, pullOptions(t, u)...)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := idx.Digest()
	if d, _ := got.Digest(); d != want {
		t.Errorf("digest = %s, want %s", d, want)
	}
	im, err := got.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.MediaType != types.DockerManifestList || len(im.Manifests) != 2 {
		t.Fatalf("index = %s with %d manifests, want %s with 2", im.MediaType, len(im.Manifests), types.DockerManifestList)
	}
	for _, tc := range []struct {
		platform v1.Platform
		layers   int
	}{
		{v1.Platform{OS: "linux", Architecture: "amd64"}, 2},
		{v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, 1},
	} {
		img, err := remote.Image(ref, append(pullOptions(t, u), remote.WithPlatform(tc.platform))...)
		if err != nil {
			t.Fatalf("pull %s: %v", tc.platform, err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.Platform(); !got.Equals(tc.platform) || len(cfg.RootFS.DiffIDs) != tc.layers {
			t.Errorf("image for %s is for %s with %d layers, want %d", tc.platform, got, len(cfg.RootFS.DiffIDs), tc.layers)
		}
	}
}
