package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// A cache of images for ls, rm and verify: what a server would have kept
// after pulls of a few tags, on the days around day.

const (
	ociManifest = "application/vnd.oci.image.manifest.v1+json"
	ociIndex    = "application/vnd.oci.image.index.v1+json"
)

// cacheFixture writes entries into a store as a server would, with fixed
// last uses where the store keeps them (on disk).
type cacheFixture struct {
	t     *testing.T
	store cachestore.Store
}

// put commits data under key, and sets its last use to used where it can.
func (f *cacheFixture) put(key string, opts cachestore.Options, data []byte, used time.Time) {
	f.t.Helper()
	ctx := context.Background()
	w, err := f.store.Create(ctx, key, opts)
	if err != nil {
		f.t.Fatal(err)
	}
	defer w.Cancel()
	if _, err := w.Write(data); err != nil {
		f.t.Fatal(err)
	}
	if err := w.Commit(ctx, digest.FromBytes(data)); err != nil {
		f.t.Fatal(err)
	}
	if tc, ok := f.store.(cachestore.Toucher); ok {
		if err := tc.Touch(ctx, key, used); err != nil {
			f.t.Fatal(err)
		}
	}
}

// blob commits n bytes of seed as a blob.
func (f *cacheFixture) blob(seed byte, n int, used time.Time) digest.Digest {
	f.t.Helper()
	data := bytes.Repeat([]byte{seed}, n)
	d := digest.FromBytes(data)
	f.put(cachestore.BlobKey(d), cachestore.Options{Kind: cachestore.Content}, data, used)
	return d
}

type desc struct {
	MediaType string        `json:"mediaType,omitempty"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
}

// image commits an image manifest of config and layers.
func (f *cacheFixture) image(config digest.Digest, used time.Time, layers ...digest.Digest) digest.Digest {
	f.t.Helper()
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{2, ociManifest, desc{Digest: config}, []desc{}}
	for _, l := range layers {
		m.Layers = append(m.Layers, desc{Digest: l})
	}
	body, _ := json.Marshal(m)
	d := digest.FromBytes(body)
	f.put(cachestore.ManifestKey(d), cachestore.Options{Kind: cachestore.Content, MediaType: ociManifest}, body, used)
	return d
}

// index commits an index of manifests, which need not be cached.
func (f *cacheFixture) index(used time.Time, manifests ...digest.Digest) digest.Digest {
	f.t.Helper()
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Manifests     []desc `json:"manifests"`
	}{2, ociIndex, nil}
	for _, c := range manifests {
		m.Manifests = append(m.Manifests, desc{MediaType: ociManifest, Digest: c})
	}
	body, _ := json.Marshal(m)
	d := digest.FromBytes(body)
	f.put(cachestore.ManifestKey(d), cachestore.Options{Kind: cachestore.Content, MediaType: ociIndex}, body, used)
	return d
}

// tag commits a tag record as the proxy writes it; a zero expires is left
// out, as in records written before TTL rules.
func (f *cacheFixture) tag(registry, repo, tag, accept string, d digest.Digest, validated, expires time.Time) string {
	f.t.Helper()
	rec := map[string]any{"registry": registry, "repository": repo, "tag": tag, "accept": accept,
		"digest": d, "mediaType": ociManifest, "validated": validated}
	if !expires.IsZero() {
		rec["expires"] = expires
	}
	body, _ := json.Marshal(rec)
	key := cachestore.TagKey(digest.FromString(registry + "\n" + repo + "\n" + tag + "\n" + accept).Encoded())
	f.put(key, cachestore.Options{Kind: cachestore.Record}, body, validated)
	return key
}

// imageCache is what fillImageCache wrote: the digests of its blobs and
// manifests and the keys of its tag records.
type imageCache struct {
	// Blobs: configs C, layers L (L2 is in both app images), a blob of an
	// untagged manifest, and one no manifest names.
	C1, L1, L2, C2, L3, C3, L4, L5, Unreferenced digest.Digest
	// Manifests: app:v1's image; app:v2's index and its image (its other
	// platform is not cached); alpine's image; an untagged image.
	M1, I2, M2, M3, M4 digest.Digest
	// Tag records: app:v1 twice (two Accept headers), app:v2, Docker Hub's
	// alpine:3.20, and a tag of a registry on port 5000 whose manifest is
	// not cached and whose TTL of 0 has passed.
	V1a, V1b, V2, Alpine, Tool string
}

// fillImageCache writes the image cache into s. Last uses are spread over
// day and the two days after; records hold expiries where TTL rules would
// have written them.
func fillImageCache(t *testing.T, s cachestore.Store) imageCache {
	t.Helper()
	f := &cacheFixture{t: t, store: s}
	h := time.Hour
	var c imageCache
	c.C1 = f.blob('a', 200, day)
	c.L1 = f.blob('b', 2<<20, day)
	c.L2 = f.blob('c', 1<<20, day.Add(30*h))
	c.C2 = f.blob('d', 300, day.Add(30*h))
	c.L3 = f.blob('e', 512<<10, day.Add(30*h))
	c.C3 = f.blob('f', 250, day.Add(47*h))
	c.L4 = f.blob('g', 3<<20, day.Add(47*h))
	c.L5 = f.blob('h', 10<<10, day.Add(2*h))
	c.Unreferenced = f.blob('i', 700, day.Add(3*h))
	c.M1 = f.image(c.C1, day.Add(h), c.L1, c.L2)
	c.M2 = f.image(c.C2, day.Add(30*h), c.L2, c.L3)
	c.I2 = f.index(day.Add(30*h), c.M2, digest.FromString("arm64 image, not cached"))
	c.M3 = f.image(c.C3, day.Add(47*h), c.L4)
	c.M4 = f.image(c.L5, day.Add(2*h))
	c.V1a = f.tag("r.test:443", "app", "v1", ociManifest, c.M1, day.Add(h), time.Time{})
	c.V1b = f.tag("r.test:443", "app", "v1", ociIndex+","+ociManifest, c.M1, day.Add(25*h), time.Time{})
	c.V2 = f.tag("r.test:443", "app", "v2", ociIndex, c.I2, day.Add(30*h), day.Add(7*24*h))
	c.Alpine = f.tag("registry-1.docker.io:443", "library/alpine", "3.20", ociManifest, c.M3, day.Add(47*h), day.Add(47*h+60*24*h))
	c.Tool = f.tag("registry.test:5000", "team/tool", "latest", ociManifest, digest.FromString("tool manifest"), day.Add(40*h), day.Add(40*h))
	return c
}

// imageCacheDir returns a data dir whose disk cache holds the image cache.
func imageCacheDir(t *testing.T) (string, imageCache) {
	t.Helper()
	dataDir := t.TempDir()
	d, err := cachestore.NewDisk(filepath.Join(dataDir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	return dataDir, fillImageCache(t, d)
}

// fixedNow makes the cache commands' clock day + 2 days, the morning after
// the last pulls of the image cache.
func fixedNow(t *testing.T) {
	saved := cacheNow
	cacheNow = func() time.Time { return day.Add(48 * time.Hour) }
	t.Cleanup(func() { cacheNow = saved })
}

// cached reports whether the disk cache of dataDir has key.
func cached(t *testing.T, dataDir, key string) bool {
	t.Helper()
	d, err := cachestore.OpenDisk(filepath.Join(dataDir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Stat(context.Background(), key)
	return err == nil
}

// entryFile is the file of a key's entry in the disk cache of dataDir, as
// the disk store lays it out: its typed file if it has one.
func entryFile(t *testing.T, dataDir, key string) string {
	t.Helper()
	dir, name := filepath.Split(key)
	p := filepath.Join(dataDir, "cache", filepath.FromSlash(dir), name[:2], name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if _, err := os.Stat(p + "~typed"); err != nil {
		t.Fatalf("no file for %s: %v", key, err)
	}
	return p + "~typed"
}

// corrupt flips the last byte of key's file, keeping its size and time.
func corrupt(t *testing.T, dataDir, key string) {
	t.Helper()
	p := entryFile(t, dataDir, key)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0xff
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, time.Time{}, fi.ModTime()); err != nil {
		t.Fatal(err)
	}
}
