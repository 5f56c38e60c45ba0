package testupstream

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// RunnableImage returns a linux/amd64 image that real clients (dockerd,
// containerd, podman) can pull, unpack and create a container from: a
// Docker schema 2 manifest over layers gzip'd tar layers, layer N holding
// /etc/hello-N.txt and /etc/hello-N.id, and a config with Env and a Cmd
// ("/bin/sh -c ..."). It holds no executable, so starting the container
// fails. The .id files hold random text, so every call makes new digests
// and a client's own store never already has the layers. It does not push
// the image.
func (u *Upstream) RunnableImage(t testing.TB, layers int) v1.Image {
	t.Helper()
	img, err := runnableImage(v1.Platform{OS: "linux", Architecture: "amd64"}, layers)
	if err != nil {
		t.Fatalf("testupstream: runnable image: %v", err)
	}
	return img
}

// MultiArchIndex returns a Docker manifest list of two images like
// RunnableImage: RunnableImage(t, 2) for linux/amd64 and a one-layer image
// for linux/arm64/v8. It does not push the index.
func (u *Upstream) MultiArchIndex(t testing.TB) v1.ImageIndex {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	for _, p := range []struct {
		platform v1.Platform
		layers   int
	}{
		{v1.Platform{OS: "linux", Architecture: "amd64"}, 2},
		{v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, 1},
	} {
		img, err := runnableImage(p.platform, p.layers)
		if err != nil {
			t.Fatalf("testupstream: multi-arch index: %v", err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &p.platform},
		})
	}
	return idx
}

// runnableImage builds the config first: mutate.ConfigFile replaces the
// whole config, while Append then fills in RootFS.DiffIDs and History.
func runnableImage(p v1.Platform, layers int) (v1.Image, error) {
	created := v1.Time{Time: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: p.Architecture,
		OS:           p.OS,
		Variant:      p.Variant,
		Created:      created,
		RootFS:       v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cmd:        []string{"/bin/sh", "-c", "cat /etc/hello-*.txt"},
			WorkingDir: "/",
		},
	})
	if err != nil {
		return nil, err
	}
	for n := 1; n <= layers; n++ {
		layer, err := helloLayer(n)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", n, err)
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:   layer,
			History: v1.History{Created: created, CreatedBy: fmt.Sprintf("testupstream: hello layer %d", n)},
		})
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", n, err)
		}
	}
	return img, nil
}

// helloLayer returns a gzip'd tar layer with /etc and two files in it.
func helloLayer(n int) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755, ModTime: mtime}); err != nil {
		return nil, err
	}
	for _, f := range []struct{ name, body string }{
		{fmt.Sprintf("etc/hello-%d.txt", n), fmt.Sprintf("hello from layer %d\n", n)},
		{fmt.Sprintf("etc/hello-%d.id", n), rand.Text() + "\n"},
	} {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.body)), ModTime: mtime}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, f.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	// The opener gives the uncompressed tar; tarball gzips it and, with
	// caching, compresses only once for digest, size and upload.
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithCompressedCaching)
}
