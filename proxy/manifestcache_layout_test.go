package proxy

import (
	"context"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

// layoutStores are the stores the manifest cache's layout is checked on.
func layoutStores(t *testing.T) map[string]cachestore.Store {
	d, err := cachestore.NewDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return map[string]cachestore.Store{"disk": d, "memory": cachestore.NewMemory()}
}

func putEntry(t *testing.T, s cachestore.Store, key string, opts cachestore.Options, b []byte) {
	t.Helper()
	w, err := s.Create(context.Background(), key, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	w.Write(b)
	if err := w.Commit(context.Background(), digest.FromBytes(b)); err != nil {
		t.Fatal(err)
	}
}

// TestManifestOneEntry checks that a manifest is saved as one entry that
// carries its media type, with no record beside it.
func TestManifestOneEntry(t *testing.T) {
	t.Parallel()
	for name, s := range layoutStores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			body := []byte(`{"schemaVersion":2,"mediaType":"` + ociManifest + `"}`)
			m := &cachedManifest{Body: body, ContentType: ociManifest, Digest: digest.FromBytes(body)}
			if err := newManifestCache(s).save(ctx, m); err != nil {
				t.Fatal(err)
			}
			r, err := s.Open(ctx, cachestore.ManifestKey(m.Digest))
			if err != nil {
				t.Fatal(err)
			}
			r.Close()
			if r.MediaType() != ociManifest || r.Size() != int64(len(body)) {
				t.Errorf("entry: media type %q, %d bytes; want %q, %d", r.MediaType(), r.Size(), ociManifest, len(body))
			}
			if _, err := s.Open(ctx, cachestore.ManifestMetaKey(m.Digest)); !errors.Is(err, cachestore.ErrNotFound) {
				t.Errorf("Open of the old .meta record = %v, want ErrNotFound", err)
			}
			got, err := newManifestCache(s).load(ctx, m.Digest)
			if err != nil || string(got.Body) != string(body) || got.ContentType != ociManifest {
				t.Errorf("load = %+v, %v", got, err)
			}
		})
	}
}

// TestManifestLegacyLayout reads manifests that releases before the store
// kept media types wrote: a body without one, and a .meta record beside
// it; and repairs one whose record was lost.
func TestManifestLegacyLayout(t *testing.T) {
	t.Parallel()
	for name, s := range layoutStores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			body := []byte(`{"schemaVersion":2}`)
			d := digest.FromBytes(body)
			putEntry(t, s, cachestore.ManifestKey(d), cachestore.Options{Kind: cachestore.Content}, body)
			putEntry(t, s, cachestore.ManifestMetaKey(d), cachestore.Options{Kind: cachestore.Record},
				[]byte(`{"contentType":"`+ociManifest+`"}`))
			m, err := newManifestCache(s).load(ctx, d)
			if err != nil || string(m.Body) != string(body) || m.ContentType != ociManifest {
				t.Fatalf("load of the old layout = %+v, %v; want the body with type %s", m, err, ociManifest)
			}

			lost := []byte(`{"schemaVersion":2,"lost":true}`)
			ld := digest.FromBytes(lost)
			putEntry(t, s, cachestore.ManifestKey(ld), cachestore.Options{Kind: cachestore.Content}, lost)
			c := newManifestCache(s)
			if _, err := c.load(ctx, ld); !errors.Is(err, errNoMediaType) || !errors.Is(err, cachestore.ErrNotFound) {
				t.Fatalf("load of a body without its record = %v, want errNoMediaType and ErrNotFound (a miss)", err)
			}
			if err := c.save(ctx, &cachedManifest{Body: lost, ContentType: ociManifest, Digest: ld}); err != nil {
				t.Fatal(err)
			}
			m, err = newManifestCache(s).load(ctx, ld)
			if err != nil || string(m.Body) != string(lost) || m.ContentType != ociManifest {
				t.Errorf("load after the repair = %+v, %v; want the body with type %s", m, err, ociManifest)
			}
		})
	}
}
