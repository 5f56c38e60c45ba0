package fill_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/fill"
)

// stagingStore is a store that cannot import files, as a remote one: fills
// stage into its writers. It counts what they were given, and can hold or
// fail their writes.
type stagingStore struct {
	cachestore.Store
	written  atomic.Int64  // bytes its writers took
	canceled atomic.Int32  // writers canceled before any commit
	hold     chan struct{} // non-nil: every Write waits until it is closed
	failAt   int64         // positive: the Write that would take the total past it fails
}

func (s *stagingStore) Create(ctx context.Context, key string, opts cachestore.Options) (cachestore.Writer, error) {
	if opts.Kind != cachestore.Content {
		return nil, errors.New("a blob is a Content entry")
	}
	w, err := s.Store.Create(ctx, key, opts)
	if err != nil {
		return nil, err
	}
	return &stagingWriter{Writer: w, s: s}, nil
}

type stagingWriter struct {
	cachestore.Writer
	s         *stagingStore
	committed bool
}

var errStoreDown = errors.New("store unreachable")

func (w *stagingWriter) Write(p []byte) (int, error) {
	if w.s.hold != nil {
		<-w.s.hold
	}
	if w.s.failAt > 0 && w.s.written.Load()+int64(len(p)) > w.s.failAt {
		return 0, errStoreDown
	}
	n, err := w.Writer.Write(p)
	w.s.written.Add(int64(n))
	return n, err
}

func (w *stagingWriter) Commit(ctx context.Context, d digest.Digest) error {
	w.committed = true
	return w.Writer.Commit(ctx, d)
}

func (w *stagingWriter) Cancel() error {
	if !w.committed {
		w.s.canceled.Add(1)
		w.committed = true // count one Cancel per writer
	}
	return w.Writer.Cancel()
}

// wantEmptyDir fails unless dir holds nothing: a fill's spool file goes
// once it is committed, or failed.
func wantEmptyDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("spool directory still holds %s", e.Name())
	}
}

// TestStagingFollowsTheFill checks that a fill into a store that cannot
// import files hands its bytes to the store's writer while it downloads,
// not after, and that the blob becomes visible only once it is whole.
func TestStagingFollowsTheFill(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &stagingStore{Store: cachestore.NewMemory()}
		spool := t.TempDir()
		g := newGroupConfig(t, fill.Config{Store: store, SpoolDir: spool})
		blob, d := randomBlob(t, 1<<20)
		pr, pw := io.Pipe()
		r := do(t, g, t.Context(), d, whole(pr, len(blob)), fill.Led)
		half := len(blob) / 2
		go pw.Write(blob[:half])
		synctest.Wait()
		if got := store.written.Load(); got != int64(half) {
			t.Errorf("the store's writer took %d bytes while the fill had %d; want all of them", got, half)
		}
		if isCommitted(store, d) {
			t.Fatal("half a blob is visible in the store")
		}
		go func() { pw.Write(blob[half:]); pw.Close() }()
		if got, err := readAll(t, r); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("reader: %d bytes, %v; want the blob", len(got), err)
		}
		r.Close()
		synctest.Wait()
		if !isCommitted(store, d) || g.InFlight() != 0 {
			t.Fatalf("after the fill: committed %v, %d in flight; want true, 0", isCommitted(store, d), g.InFlight())
		}
		wantEmptyDir(t, spool)
	})
}

// TestSlowStoreDoesNotHoldReaders holds every write to the store: the
// readers still get the whole blob at upstream's pace, and the blob is
// committed once the store takes it.
func TestSlowStoreDoesNotHoldReaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &stagingStore{Store: cachestore.NewMemory(), hold: make(chan struct{})}
		spool := t.TempDir()
		g := newGroupConfig(t, fill.Config{Store: store, SpoolDir: spool})
		blob, d := randomBlob(t, 3<<20)
		r1 := do(t, g, t.Context(), d, whole(bytes.NewReader(blob), len(blob)), fill.Led)
		r2 := do(t, g, t.Context(), d, never(t), fill.Joined)
		for i, r := range []io.ReadCloser{r1, r2} {
			if got, err := readAll(t, r); err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("reader %d while the store takes nothing: %d bytes, %v; want the blob", i, len(got), err)
			}
			r.Close()
		}
		synctest.Wait()
		if isCommitted(store, d) || g.InFlight() != 1 {
			t.Fatalf("store held: committed %v, %d in flight; want false, 1 (the commit waits)", isCommitted(store, d), g.InFlight())
		}
		close(store.hold)
		synctest.Wait()
		if !isCommitted(store, d) || g.InFlight() != 0 {
			t.Fatalf("store released: committed %v, %d in flight; want true, 0", isCommitted(store, d), g.InFlight())
		}
		wantEmptyDir(t, spool)
	})
}

// TestStagingFailureServesButDoesNotCache fails the store's writes halfway:
// the readers get the blob all the same, nothing is committed, and the log
// says why.
func TestStagingFailureServesButDoesNotCache(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log logBuffer
		blob, d := randomBlob(t, 2<<20)
		store := &stagingStore{Store: cachestore.NewMemory(), failAt: int64(len(blob) / 2)}
		spool := t.TempDir()
		g := newGroupConfig(t, fill.Config{Store: store, SpoolDir: spool, Logger: log.logger()})
		r := do(t, g, t.Context(), d, whole(bytes.NewReader(blob), len(blob)), fill.Led)
		if got, err := readAll(t, r); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("reader: %d bytes, %v; want the blob", len(got), err)
		}
		r.Close()
		synctest.Wait()
		if isCommitted(store, d) || g.InFlight() != 0 {
			t.Fatalf("committed %v, %d in flight; want false, 0", isCommitted(store, d), g.InFlight())
		}
		if n := store.canceled.Load(); n != 1 {
			t.Errorf("%d writers canceled; want 1", n)
		}
		if s := log.String(); !strings.Contains(s, "blob served but not cached") || !strings.Contains(s, errStoreDown.Error()) {
			t.Errorf("log:\n%s\nwant a line saying the blob was not cached because %q", s, errStoreDown)
		}
		wantEmptyDir(t, spool)
		// The next request fills again, and caches this time.
		store.failAt = 0
		r = do(t, g, t.Context(), d, whole(bytes.NewReader(blob), len(blob)), fill.Led)
		readAll(t, r)
		r.Close()
		synctest.Wait()
		if !isCommitted(store, d) {
			t.Fatal("not committed once the store took writes again")
		}
	})
}

// TestFailedFillDiscardsStaging cuts upstream halfway with no resume: the
// reader gets the error, the staged bytes are discarded, nothing is
// committed and no file stays.
func TestFailedFillDiscardsStaging(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &stagingStore{Store: cachestore.NewMemory()}
		spool := t.TempDir()
		g := newGroupConfig(t, fill.Config{Store: store, SpoolDir: spool, MaxResumes: -1})
		blob, d := randomBlob(t, 1<<20)
		pr, pw := io.Pipe()
		r := do(t, g, t.Context(), d, whole(pr, len(blob)), fill.Led)
		go func() {
			pw.Write(blob[:len(blob)/2])
			pw.CloseWithError(io.ErrUnexpectedEOF)
		}()
		if _, err := readAll(t, r); err == nil {
			t.Fatal("reader of a cut fill: no error")
		}
		r.Close()
		synctest.Wait()
		if isCommitted(store, d) || g.InFlight() != 0 || store.canceled.Load() != 1 {
			t.Fatalf("committed %v, %d in flight, %d writers canceled; want false, 0, 1",
				isCommitted(store, d), g.InFlight(), store.canceled.Load())
		}
		wantEmptyDir(t, spool)
	})
}
