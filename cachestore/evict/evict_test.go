package evict_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/goleak"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/evict"
	"github.com/regproxy/regproxy/cachestore/evict/evicttest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newDisk(t testing.TB, root string) *cachestore.Disk {
	t.Helper()
	d, err := cachestore.NewDisk(root)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// logger logs to t.Log.
func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// Options of the entries the tests write.
var (
	content = cachestore.Options{Kind: cachestore.Content}
	record  = cachestore.Options{Kind: cachestore.Record}
	typed   = cachestore.Options{Kind: cachestore.Content, MediaType: "application/vnd.oci.image.manifest.v1+json"}
)

// put commits data under key.
func put(t testing.TB, s cachestore.Store, key string, opts cachestore.Options, data []byte) {
	t.Helper()
	w, err := s.Create(context.Background(), key, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(context.Background(), digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
}

// blob commits n bytes of seed as a blob and returns its key.
func blob(t testing.TB, s cachestore.Store, seed byte, n int) string {
	t.Helper()
	data := bytes.Repeat([]byte{seed}, n)
	key := cachestore.BlobKey(digest.FromBytes(data))
	put(t, s, key, content, data)
	return key
}

// use opens key as a hit would.
func use(t testing.TB, s cachestore.Store, key string) {
	t.Helper()
	r, err := s.Open(context.Background(), key)
	if err != nil {
		t.Fatalf("open %s: %v", key, err)
	}
	r.Close()
}

func has(s cachestore.Stater, key string) bool {
	_, err := s.Stat(context.Background(), key)
	return err == nil
}

// run runs ix until the test ends.
func run(t *testing.T, ix *evict.Index) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ix.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// eventually waits up to 10 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCapEvictsLeastRecentlyUsedBlob(t *testing.T) {
	t.Parallel()
	s := newDisk(t, t.TempDir())
	ix := evict.New(s, evict.Config{MaxSize: 3000, CheckEvery: time.Hour, Logger: logger(t)})
	run(t, ix)
	a, b, c := blob(t, s, 'a', 1000), blob(t, s, 'b', 1000), blob(t, s, 'c', 1000)
	use(t, s, a)
	d := blob(t, s, 'd', 1000)
	eventually(t, "the cache is back under its cap", func() bool { return ix.Stats().Bytes <= 3000 })
	for key, want := range map[string]bool{a: true, b: false, c: true, d: true} {
		if got := has(s, key); got != want {
			t.Errorf("%s (%c) cached = %v, want %v", key, "abcd"[map[string]int{a: 0, b: 1, c: 2, d: 3}[key]], got, want)
		}
	}
	if st := ix.Stats(); st.Evicted.Entries != 1 || st.Blobs.Entries != 3 {
		t.Errorf("stats: evicted %d, blobs %d; want 1 and 3", st.Evicted.Entries, st.Blobs.Entries)
	}
}

func TestLastUseSurvivesRestart(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	clk := newClock()
	clk.Advance(time.Hour) // ahead of the files' own times
	s := newDisk(t, root)
	stop := run(t, evict.New(s, evict.Config{Now: clk.Now, CheckEvery: time.Hour, Logger: logger(t)}))
	a, b, c := blob(t, s, 'a', 1000), blob(t, s, 'b', 1000), blob(t, s, 'c', 1000)
	clk.Advance(2 * time.Minute) // more than TouchEvery since the commits
	use(t, s, a)
	stop() // writes a's last use

	s2 := newDisk(t, root)
	ix2 := evict.New(s2, evict.Config{MaxSize: 2000, Now: clk.Now, CheckEvery: time.Hour, Logger: logger(t)})
	run(t, ix2)
	eventually(t, "the cache is under its cap after the restart", func() bool {
		st := ix2.Stats()
		return st.Loaded && st.Bytes <= 2000
	})
	// a, used last before the restart, stays; b, the oldest use, goes.
	for key, want := range map[string]bool{a: true, b: false, c: true} {
		if got := has(s2, key); got != want {
			t.Errorf("after restart: %s cached = %v, want %v", key, got, want)
		}
	}
}

func TestTouchIsRateLimited(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	clk := newClock()
	s := newDisk(t, root)
	stop := run(t, evict.New(s, evict.Config{Now: clk.Now, CheckEvery: time.Hour, Logger: logger(t)}))
	a := blob(t, s, 'a', 100)
	before := mtime(t, s, a)
	clk.Advance(30 * time.Second)
	use(t, s, a) // within TouchEvery of the commit: memory only
	stop()
	if got := mtime(t, s, a); !got.Equal(before) {
		t.Errorf("a use 30s after the commit wrote the file's time: %v, was %v", got, before)
	}
}

func mtime(t *testing.T, s *cachestore.Disk, key string) time.Time {
	t.Helper()
	info, err := s.Stat(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return info.LastUse
}

func TestMinFreeSpace(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		cfg  evict.Config
	}{
		{"bytes", evict.Config{MinFree: 3000}},
		{"percent", evict.Config{MinFreePercent: 30}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			s := newDisk(t, root)
			// A filesystem of 10000 bytes that holds only the cache.
			const fsSize = 10000
			tt.cfg.FreeSpace = func() (int64, int64, error) { return fsSize - usedBytes(t, root), fsSize, nil }
			tt.cfg.CheckEvery = 10 * time.Millisecond
			tt.cfg.Logger = logger(t)
			ix := evict.New(s, tt.cfg)
			run(t, ix)
			var keys []string
			for i := range 8 {
				keys = append(keys, blob(t, s, byte('a'+i), 1000))
			}
			eventually(t, "3000 bytes are free", func() bool { return fsSize-usedBytes(t, root) >= 3000 })
			time.Sleep(50 * time.Millisecond) // a few more checks: nothing more may go
			if got := usedBytes(t, root); got != 7000 {
				t.Errorf("cache holds %d bytes, want 7000 (one blob evicted)", got)
			}
			if has(s, keys[0]) || !has(s, keys[1]) {
				t.Errorf("the oldest blob should have gone, and only it")
			}
			if st := ix.Stats(); st.Free != 3000 || st.FreeFloor != 3000 {
				t.Errorf("stats: free %d, floor %d; want 3000 and 3000", st.Free, st.FreeFloor)
			}
		})
	}
}

// usedBytes sums the files under root, as a filesystem would count them.
func usedBytes(t *testing.T, root string) int64 {
	var n int64
	err := filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		n += fi.Size()
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	return n
}

// manifest commits a manifest body padded to about pad bytes, naming
// children if any, with its media type, and returns its digest. The
// manifest count makes every body a new one.
func manifest(t *testing.T, s cachestore.Store, pad int, children ...digest.Digest) digest.Digest {
	t.Helper()
	d, body := manifestBody(pad, children...)
	put(t, s, cachestore.ManifestKey(d), typed, body)
	return d
}

// legacyManifest is manifest as releases before media types were kept with
// entries wrote it: a body without a type, and a .meta record beside it.
func legacyManifest(t *testing.T, s cachestore.Store, pad int, children ...digest.Digest) digest.Digest {
	t.Helper()
	d, body := manifestBody(pad, children...)
	put(t, s, cachestore.ManifestKey(d), content, body)
	put(t, s, cachestore.ManifestMetaKey(d), record, []byte(`{"contentType":"application/vnd.oci.image.manifest.v1+json"}`))
	return d
}

func manifestBody(pad int, children ...digest.Digest) (digest.Digest, []byte) {
	type desc struct {
		Digest digest.Digest `json:"digest"`
	}
	m := struct {
		Manifests []desc `json:"manifests,omitempty"`
		N         int64  `json:"n"`
		Pad       string `json:"pad"`
	}{N: manifests.Add(1), Pad: string(bytes.Repeat([]byte{'x'}, pad))}
	for _, c := range children {
		m.Manifests = append(m.Manifests, desc{c})
	}
	body, _ := json.Marshal(m)
	return digest.FromBytes(body), body
}

var manifests atomic.Int64

// tag commits a tag record naming d, validated at v.
func tag(t *testing.T, s cachestore.Store, name string, d digest.Digest, v time.Time) string {
	t.Helper()
	key := cachestore.TagKey(digest.FromString(name).Encoded())
	rec, _ := json.Marshal(map[string]any{"registry": "r.test", "repository": "app", "tag": name, "digest": d, "validated": v})
	put(t, s, key, record, rec)
	return key
}

// TestManifestsAfterBlobsAndTagsKeepTheirs runs with manifests of both
// layouts: one entry with its media type, and a body with a .meta record
// beside it, as older releases left them.
func TestManifestsAfterBlobsAndTagsKeepTheirs(t *testing.T) {
	t.Parallel()
	for _, layout := range []struct {
		name     string
		manifest func(t *testing.T, s cachestore.Store, pad int, children ...digest.Digest) digest.Digest
	}{{"typed", manifest}, {"legacy", legacyManifest}} {
		t.Run(layout.name, func(t *testing.T) {
			t.Parallel()
			manifestsAfterBlobs(t, layout.manifest)
		})
	}
}

func manifestsAfterBlobs(t *testing.T, manifest func(t *testing.T, s cachestore.Store, pad int, children ...digest.Digest) digest.Digest) {
	clk := newClock()
	s := newDisk(t, t.TempDir())
	// Oldest first: the manifests tags keep, then the others, then a blob.
	child := manifest(t, s, 1000)
	index := manifest(t, s, 1000, child)
	live := manifest(t, s, 1000)
	stale := manifest(t, s, 1000)
	loose := manifest(t, s, 1000)
	tag(t, s, "index", index, clk.Now())
	tag(t, s, "live", live, clk.Now())
	staleTag := tag(t, s, "stale", stale, clk.Now().Add(-2*time.Hour))
	b := blob(t, s, 'b', 1000)

	ix := evict.New(s, evict.Config{Now: clk.Now, ManifestTTL: time.Hour, Logger: logger(t)})
	if err := ix.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Leave room for everything but the blob, loose and stale.
	st := ix.Stats()
	room := st.Bytes - 1000 - size(t, s, cachestore.ManifestKey(loose), cachestore.ManifestMetaKey(loose)) -
		size(t, s, cachestore.ManifestKey(stale), cachestore.ManifestMetaKey(stale), staleTag)
	res := ix.Trim(t.Context(), room)
	if res.Bytes != st.Bytes-room {
		t.Errorf("Trim freed %d bytes, want %d", res.Bytes, st.Bytes-room)
	}
	gone := []string{b, cachestore.ManifestKey(loose), cachestore.ManifestMetaKey(loose),
		cachestore.ManifestKey(stale), cachestore.ManifestMetaKey(stale), staleTag}
	for _, key := range gone {
		if has(s, key) {
			t.Errorf("%s is still cached, want it evicted", key)
		}
	}
	for _, d := range []digest.Digest{child, index, live} {
		for _, key := range []string{cachestore.ManifestKey(d), cachestore.ManifestMetaKey(d)} {
			if !has(s, key) && size(t, s, key) > 0 {
				t.Errorf("%s was evicted, but a live tag keeps it", key)
			}
		}
	}
}

// size is the bytes the entries of keys take; a key of no entry (a .meta
// record the manifest's layout has not) takes none.
func size(t *testing.T, s cachestore.Stater, keys ...string) int64 {
	t.Helper()
	var n int64
	for _, key := range keys {
		info, err := s.Stat(context.Background(), key)
		if errors.Is(err, cachestore.ErrNotFound) && strings.HasSuffix(key, ".meta") {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		n += info.Size
	}
	return n
}

func TestEvictUnusedSince(t *testing.T) {
	t.Parallel()
	clk := newClock()
	s := newDisk(t, t.TempDir())
	ix := evict.New(s, evict.Config{Now: clk.Now, Logger: logger(t)})
	old := blob(t, s, 'o', 100)
	loose := legacyManifest(t, s, 10)
	oldTag := tag(t, s, "old", loose, clk.Now())
	looseTyped := manifest(t, s, 10)
	kept := manifest(t, s, 10)
	keptLegacy := legacyManifest(t, s, 10)
	clk.Advance(48 * time.Hour)
	fresh := blob(t, s, 'f', 100)
	youngTag := tag(t, s, "young", kept, clk.Now())
	tag(t, s, "young-legacy", keptLegacy, clk.Now())
	if err := ix.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	res := ix.EvictUnusedSince(t.Context(), clk.Now().Add(-24*time.Hour))
	if res.Entries != 5 {
		t.Errorf("evicted %d entries, want 5 (a blob, a tag record, a manifest and its .meta, a typed manifest)", res.Entries)
	}
	gone := []string{old, oldTag, cachestore.ManifestKey(loose), cachestore.ManifestMetaKey(loose),
		cachestore.ManifestKey(looseTyped)}
	for _, key := range gone {
		if has(s, key) {
			t.Errorf("%s is still cached, want it evicted", key)
		}
	}
	stay := []string{fresh, youngTag, cachestore.ManifestKey(kept),
		cachestore.ManifestKey(keptLegacy), cachestore.ManifestMetaKey(keptLegacy)}
	for _, key := range stay {
		if !has(s, key) {
			t.Errorf("%s was evicted, want it kept", key)
		}
	}
}

// BenchmarkLoad measures building the index of a store of 100k blobs at
// start: the walk of the directories, a stat per file, and the merge.
func BenchmarkLoad(b *testing.B) {
	root := b.TempDir()
	evicttest.Populate(b, root, 100_000)
	b.ResetTimer()
	for b.Loop() {
		ix := evict.New(newDisk(b, root), evict.Config{Logger: slog.New(slog.DiscardHandler)})
		if err := ix.Load(context.Background()); err != nil {
			b.Fatal(err)
		}
		if n := ix.Stats().Entries; n != 100_000 {
			b.Fatalf("%d entries, want 100000", n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/load")
}

func TestResyncLearnsWhatOtherProcessesDid(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	s := newDisk(t, root)
	ix := evict.New(s, evict.Config{ResyncEvery: 10 * time.Millisecond, Logger: logger(t)})
	run(t, ix)
	a := blob(t, s, 'a', 1000)
	blob(t, s, 'b', 1000)
	// Another process (regproxy cache gc, say) removes a and adds c.
	other, err := cachestore.OpenDisk(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.DeleteIf(t.Context(), a, func() bool { return true }); err != nil {
		t.Fatal(err)
	}
	blob(t, other, 'c', 500)
	eventually(t, "the index counts b and c", func() bool {
		st := ix.Stats()
		return st.Blobs.Entries == 2 && st.Blobs.Bytes == 1500
	})
}
