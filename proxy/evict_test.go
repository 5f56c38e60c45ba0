package proxy_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/evict"
	"github.com/regproxy/regproxy/proxy"
)

// evicting makes every proxy the env starts from now on keep its disk
// store within cfg's bounds, as serve does, and restarts the proxy. The
// index of the proxy running now is ix(); stopIndex stops it (writing its
// last uses), as serve does after the proxy stopped.
type evicting struct {
	mu   sync.Mutex
	ix   *evict.Index
	stop func()
}

func withEviction(t *testing.T, e *env, cfg evict.Config) *evicting {
	t.Helper()
	ev := &evicting{}
	cfg.Logger = e.logger()
	e.stop()
	e.configure = func(pc *proxy.Config) {
		ix := evict.New(pc.Store.(*cachestore.Disk), cfg)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- ix.Run(ctx) }()
		ev.mu.Lock()
		defer ev.mu.Unlock()
		var once sync.Once
		ev.ix, ev.stop = ix, func() {
			once.Do(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("index Run: %v", err)
				}
			})
		}
		t.Cleanup(ev.stop)
	}
	e.start()
	return ev
}

func (ev *evicting) index() *evict.Index {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return ev.ix
}

func (ev *evicting) stopIndex() {
	ev.mu.Lock()
	stop := ev.stop
	ev.mu.Unlock()
	stop()
}

// cachedBytes sums the committed entries of the env's cache on disk (the
// spool of fills in progress is not the cache).
func cachedBytes(t testing.TB, e *env) int64 {
	root := filepath.Join(e.dataDir, "cache")
	var n int64
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return nil // removed while walking
		case d.IsDir() && p == filepath.Join(root, "tmp"):
			return filepath.SkipDir
		case d.IsDir():
			return nil
		}
		if fi, err := d.Info(); err == nil {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 20s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// getBlob GETs a blob through the proxy and checks it against d.
func getBlob(t *testing.T, e *env, c *http.Client, d v1.Hash) error {
	resp, err := c.Get("https://" + e.up.Host + "/v2/r/blobs/" + d.String())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	if resp.StatusCode != http.StatusOK || fmt.Sprintf("sha256:%x", h.Sum(nil)) != d.String() {
		return fmt.Errorf("blob %s: status %d, body of another digest", d, resp.StatusCode)
	}
	return nil
}

func TestEvictionKeepsCacheUnderCapWithConcurrentFills(t *testing.T) {
	t.Parallel()
	const (
		blobSize = 512 << 10
		fills    = 8
		each     = 3
		maxSize  = 8 * blobSize
	)
	e := newEnv(t)
	ev := withEviction(t, e, evict.Config{MaxSize: maxSize})
	var blobs []v1.Hash
	for range fills * each {
		d, _ := oneLayer(t, e, blobSize)
		blobs = append(blobs, d)
	}

	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // how far past the cap do the commits of 8 fills get?
		defer close(sampled)
		for {
			peak.Store(max(peak.Load(), cachedBytes(t, e)))
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, len(blobs))
	for i := range fills {
		wg.Go(func() {
			c := e.client()
			for _, d := range blobs[i*each : (i+1)*each] {
				errs <- getBlob(t, e, c, d)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err) // a fill that passed the cap must still reach its client whole
		}
	}
	// A fill commits after its client has the last byte: wait for all 24.
	waitUntil(t, "every blob is committed, and the cache is back under its cap", func() bool {
		st := ev.index().Stats()
		return st.Blobs.Entries+st.Evicted.Entries == len(blobs) && st.Bytes <= maxSize && cachedBytes(t, e) <= maxSize
	})
	close(stop)
	<-sampled
	// Each fill commits before the room is made: at most one blob per fill
	// running at once past the cap.
	if p := peak.Load(); p > maxSize+fills*blobSize {
		t.Errorf("the cache reached %d bytes, more than the cap %d plus one blob per concurrent fill", p, maxSize)
	}
	if st := ev.index().Stats(); st.Evicted.Entries != len(blobs)-8 {
		t.Errorf("index: %d evictions, want %d: no more than the cap asks", st.Evicted.Entries, len(blobs)-8)
	}
	if n := e.up.Count("GET blob"); n != int64(len(blobs)) {
		t.Errorf("%d upstream blob GETs, want %d (one fill each)", n, len(blobs))
	}
}

func TestEvictionDoesNotCutAStreamingClient(t *testing.T) {
	t.Parallel()
	const size = 16 << 20 // far more than the socket buffers hold
	e := newEnv(t)
	withEviction(t, e, evict.Config{MaxSize: size})
	big, _ := oneLayer(t, e, size)
	small, _ := oneLayer(t, e, 1<<20)
	key := cachestore.BlobKey(digest.Digest(big.String()))
	store := openDisk(t, e)
	if err := getBlob(t, e, e.client(), big); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the big blob is committed", func() bool { _, err := store.Stat(t.Context(), key); return err == nil })

	// A client starts reading the big blob from the cache, and stalls.
	resp, err := e.client().Get("https://" + e.up.Host + "/v2/r/blobs/" + big.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, resp.Body, 64<<10); err != nil {
		t.Fatal(err)
	}
	// Another blob passes the cap: the big one, least recently used, goes.
	if err := getBlob(t, e, e.client(), small); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the big blob is evicted", func() bool {
		_, err := store.Stat(t.Context(), key)
		return errors.Is(err, cachestore.ErrNotFound)
	})
	n, err := io.Copy(h, resp.Body)
	if err != nil || 64<<10+n != size || fmt.Sprintf("sha256:%x", h.Sum(nil)) != big.String() {
		t.Fatalf("the client streaming the evicted blob got %d bytes (%v), want all %d and the digest", 64<<10+n, err, size)
	}
	if got := e.up.Count("GET blob"); got != 2 {
		t.Errorf("%d upstream blob GETs, want 2 (the second read of the big blob was a hit)", got)
	}
}

func TestEvictionLastUseSurvivesRestart(t *testing.T) {
	t.Parallel()
	const size = 256 << 10
	e := newEnv(t)
	clk := &clock{now: time.Now().Add(time.Hour)} // ahead of the files' own times
	ev := withEviction(t, e, evict.Config{Now: clk.Now})
	var blobs []v1.Hash
	for range 3 {
		d, _ := oneLayer(t, e, size)
		blobs = append(blobs, d)
		if err := getBlob(t, e, e.client(), d); err != nil {
			t.Fatal(err)
		}
	}
	store := openDisk(t, e)
	waitUntil(t, "the blobs are committed", func() bool { return ev.index().Stats().Blobs.Entries == 3 })
	clk.Advance(2 * time.Minute)
	if err := getBlob(t, e, e.client(), blobs[0]); err != nil { // a hit: the oldest is now the newest
		t.Fatal(err)
	}

	e.stop()
	ev.stopIndex()
	ev = withEviction(t, e, evict.Config{MaxSize: 2 * size, Now: clk.Now})
	waitUntil(t, "the cache is under its new cap", func() bool {
		st := ev.index().Stats()
		return st.Loaded && st.Bytes <= 2*size
	})
	for i, want := range []bool{true, false, true} {
		_, err := store.Stat(t.Context(), cachestore.BlobKey(digest.Digest(blobs[i].String())))
		if got := err == nil; got != want {
			t.Errorf("blob %d cached after the restart = %v, want %v", i, got, want)
		}
	}
}

// openDisk opens the env's cache as a second process would, to look.
func openDisk(t *testing.T, e *env) *cachestore.Disk {
	d, err := cachestore.OpenDisk(filepath.Join(e.dataDir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}
