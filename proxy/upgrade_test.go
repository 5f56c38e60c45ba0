package proxy_test

import (
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// TestUpgradeKeepsLegacyManifests starts on a disk cache in the layout of
// releases before the store kept media types (each manifest a body without
// a type, and a .meta record of its Content-Type beside it): every cached
// manifest still serves, and no manifest or blob is fetched again.
func TestUpgradeKeepsLegacyManifests(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	img := e.up.RandomImage(t, 2, 1000)
	e.up.Push(t, "r", "t", img)
	idx := e.up.MultiArchIndex(t)
	e.up.PushIndex(t, "r", "multi", idx)
	want := e.pull("r", "t")
	wantIdx := e.pull("r", "multi")
	e.stop()

	types := toLegacyLayout(t, filepath.Join(e.dataDir, "cache"))
	if len(types) < 3 {
		t.Fatalf("rewrote %d manifests in the old layout, want at least 3 (an image, an index and its platform's)", len(types))
	}
	e.start()
	e.up.ResetCounts()
	if got := e.pull("r", "t"); got != want {
		t.Errorf("pull after the upgrade: %s, want %s", got, want)
	}
	if got := e.pull("r", "multi"); got != wantIdx {
		t.Errorf("pull of the index after the upgrade: %s, want %s", got, wantIdx)
	}
	// Each manifest comes with the Content-Type its record kept.
	c := e.client()
	for d, mediaType := range types {
		for _, method := range []string{"GET", "HEAD"} {
			resp, body := e.get(c, method, "/v2/r/manifests/"+d.String(), "Accept", strings.Join(manifestTypes, ", "))
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != mediaType ||
				method == "GET" && digest.FromBytes(body) != d {
				t.Errorf("%s %s: %d, Content-Type %q; want 200, %q and the body", method, d, resp.StatusCode,
					resp.Header.Get("Content-Type"), mediaType)
			}
		}
	}
	for _, kind := range []string{"GET manifest", "HEAD manifest", "GET blob"} {
		if n := e.up.Count(kind); n != 0 {
			t.Errorf("after the upgrade: %d upstream %ss, want 0", n, kind)
		}
	}

	// Once the tags are stale, they are revalidated, and the manifests
	// still come from the cache: with the upstream gone, too.
	e.stop()
	e.start(e.up.Host, "127.0.0.1:1")
	e.clock.Advance(e.ttl + time.Second)
	if got := e.pull("r", "t"); got != want {
		t.Errorf("offline pull after the upgrade: %s, want %s", got, want)
	}
}

// TestUpgradeRepairsLostRecord starts on a cache of the old layout that
// lost a manifest's .meta record (a crash between the two writes of an old
// release): the manifest is fetched once more, and served from the cache
// after that, its body left as it was.
func TestUpgradeRepairsLostRecord(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "r", "t", img)
	want := e.pull("r", "t")
	e.stop()
	root := filepath.Join(e.dataDir, "cache")
	toLegacyLayout(t, root)
	d, err := cachestore.NewDisk(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(context.Background(), cachestore.ManifestMetaKey(digest.Digest(want.String()))); err != nil {
		t.Fatal(err)
	}

	e.start()
	e.clock.Advance(e.ttl + time.Second)
	e.up.ResetCounts()
	if got := e.pull("r", "t"); got != want {
		t.Fatalf("pull: %s, want %s", got, want)
	}
	if n := e.up.Count("GET manifest"); n == 0 {
		t.Errorf("a manifest without its record was served without a fetch")
	}
	e.up.ResetCounts()
	e.restart() // no manifest in memory
	e.clock.Advance(e.ttl + time.Second)
	if got := e.pull("r", "t"); got != want {
		t.Fatalf("pull after the repair: %s, want %s", got, want)
	}
	if n := e.up.Count("GET manifest"); n != 0 {
		t.Errorf("after the record was written again: %d upstream manifest GETs, want 0", n)
	}
}

var manifestTypes = []string{
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
}

// toLegacyLayout rewrites every manifest of the disk cache at root as a
// release before media types wrote it, and returns their media types.
func toLegacyLayout(t *testing.T, root string) map[digest.Digest]string {
	t.Helper()
	ctx := context.Background()
	d, err := cachestore.NewDisk(root)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	err = d.Walk(ctx, func(e cachestore.Entry) error {
		if strings.HasPrefix(e.Key, "manifests/") {
			keys = append(keys, e.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	types := make(map[digest.Digest]string)
	for _, key := range keys {
		r, err := d.Open(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(r)
		mediaType := r.MediaType()
		r.Close()
		if err != nil || mediaType == "" {
			t.Fatalf("%s: %v, media type %q; want the entry with its type", key, err, mediaType)
		}
		if err := d.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		meta, _ := json.Marshal(map[string]string{"contentType": mediaType})
		put := func(key string, kind cachestore.Kind, b []byte) {
			w, err := d.Create(ctx, key, cachestore.Options{Kind: kind})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Cancel()
			w.Write(b)
			if err := w.Commit(ctx, digest.FromBytes(b)); err != nil {
				t.Fatal(err)
			}
		}
		put(key, cachestore.Content, body)
		put(key+".meta", cachestore.Record, meta)
		types[digest.FromBytes(body)] = mediaType
	}
	return types
}
