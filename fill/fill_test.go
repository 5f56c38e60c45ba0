package fill_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/goleak"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/fill"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func randomBlob(t testing.TB, n int) ([]byte, digest.Digest) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b, digest.FromBytes(b)
}

func newGroup(t *testing.T, store cachestore.Store, maxResumes int) *fill.Group {
	t.Helper()
	return newGroupConfig(t, fill.Config{Store: store, MaxResumes: maxResumes})
}

// newGroupConfig is New with a test's spool directory, a minute's timeout
// and a silent log, unless cfg says otherwise.
func newGroupConfig(t *testing.T, cfg fill.Config) *fill.Group {
	t.Helper()
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = t.TempDir()
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	g := fill.New(cfg)
	t.Cleanup(g.Close)
	return g
}

// whole is a Fetch that returns body as the whole blob, and fails resumes.
func whole(body io.Reader, size int) fill.Fetch {
	return func(_ context.Context, off int64) (fill.Body, error) {
		if off != 0 {
			return fill.Body{}, errors.New("no resumes here")
		}
		return fill.Body{ReadCloser: io.NopCloser(body), Size: int64(size)}, nil
	}
}

// never is a Fetch that must not be called.
func never(t *testing.T) fill.Fetch {
	return func(context.Context, int64) (fill.Body, error) {
		t.Error("a joiner's fetch was called")
		return fill.Body{}, errors.New("never")
	}
}

// do calls g.Do and fails the test on an error or an unexpected source.
func do(t *testing.T, g *fill.Group, ctx context.Context, d digest.Digest, fetch fill.Fetch, want fill.Source) *fill.Blob {
	t.Helper()
	b, err := g.Do(ctx, d, fetch)
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if b.Source != want {
		b.Close()
		t.Fatalf("Do: source %v, want %v", b.Source, want)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// readAll reads r to the end under a deadline.
func readAll(t *testing.T, r io.Reader) ([]byte, error) {
	t.Helper()
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() { b, err := io.ReadAll(r); done <- result{b, err} }()
	select {
	case res := <-done:
		return res.b, res.err
	case <-time.After(10 * time.Second):
		t.Fatal("read did not finish in 10s")
		return nil, nil
	}
}

// readN reads exactly n bytes under a deadline.
func readN(t *testing.T, r io.Reader, n int) []byte {
	t.Helper()
	b, err := readAll(t, io.LimitReader(r, int64(n)))
	if err != nil || len(b) != n {
		t.Fatalf("read %d bytes, err %v; want %d", len(b), err, n)
	}
	return b
}

func isCommitted(store cachestore.Store, d digest.Digest) bool {
	r, err := store.Open(context.Background(), cachestore.BlobKey(d))
	if err == nil {
		r.Close()
	}
	return err == nil
}

func TestJoinersShareOneFillAndStreamBeforeCompletion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := cachestore.NewMemory()
		g := newGroup(t, store, 0)
		blob, d := randomBlob(t, 1<<20)
		pr, pw := io.Pipe()

		leader := do(t, g, t.Context(), d, whole(pr, len(blob)), fill.Led)
		half := len(blob) / 2
		go pw.Write(blob[:half])

		const joiners = 8
		readers := []io.Reader{leader}
		for range joiners {
			readers = append(readers, do(t, g, t.Context(), d, never(t), fill.Joined))
		}
		// Bytes flow before the fill completes, from byte 0 for late joiners.
		for i, r := range readers {
			if got := readN(t, r, half); !bytes.Equal(got, blob[:half]) {
				t.Fatalf("reader %d: first half differs", i)
			}
		}
		go func() { pw.Write(blob[half:]); pw.Close() }()
		var wg sync.WaitGroup
		for i, r := range readers {
			wg.Go(func() {
				rest, err := io.ReadAll(r)
				if err != nil || !bytes.Equal(rest, blob[half:]) {
					t.Errorf("reader %d: rest %d bytes err %v", i, len(rest), err)
				}
			})
		}
		wg.Wait()
		// Readers finish once the digest is verified; the commit (fsync and
		// rename) may still be under way.
		synctest.Wait()
		if g.InFlight() != 0 || !isCommitted(store, d) {
			t.Fatalf("after the fill: %d in flight, committed %v", g.InFlight(), isCommitted(store, d))
		}
		do(t, g, t.Context(), d, never(t), fill.Hit)
	})
}

func TestLastByteWithheldUntilVerified(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, cachestore.NewMemory(), 0)
		blob, d := randomBlob(t, 4096)
		pr, pw := io.Pipe()
		r := do(t, g, t.Context(), d, whole(pr, len(blob)), fill.Led)
		go pw.Write(blob) // every byte, but no EOF yet: not verified
		readN(t, r, len(blob)-1)

		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		r2 := do(t, g, ctx, d, never(t), fill.Joined)
		r2.Seek(int64(len(blob)-1), io.SeekStart)
		if n, err := r2.Read(make([]byte, 1)); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("read of the last byte before EOF upstream: n=%d err=%v; want to block", n, err)
		}
		pw.Close()
		if rest, err := readAll(t, r); err != nil || !bytes.Equal(rest, blob[len(blob)-1:]) {
			t.Fatalf("after verification: %q, %v", rest, err)
		}
	})
}

func TestFailureAbortsEveryReaderAndCommitsNothing(t *testing.T) {
	cases := []struct {
		name string
		feed func(pw *io.PipeWriter, blob []byte)
	}{
		{"digest mismatch", func(pw *io.PipeWriter, blob []byte) {
			bad := bytes.Clone(blob)
			bad[10] ^= 0xff
			pw.Write(bad)
			pw.Close()
		}},
		{"cut", func(pw *io.PipeWriter, blob []byte) {
			pw.Write(blob[:100])
			pw.CloseWithError(io.ErrUnexpectedEOF)
		}},
		{"short", func(pw *io.PipeWriter, blob []byte) {
			pw.Write(blob[:100])
			pw.Close()
		}},
		{"long", func(pw *io.PipeWriter, blob []byte) {
			pw.Write(append(bytes.Clone(blob), 'x'))
			pw.Close()
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				store := cachestore.NewMemory()
				g := newGroup(t, store, -1)
				blob, d := randomBlob(t, 1000)
				pr, pw := io.Pipe()
				r1 := do(t, g, t.Context(), d, whole(pr, len(blob)), fill.Led)
				r2 := do(t, g, t.Context(), d, never(t), fill.Joined)
				go tc.feed(pw, blob)
				for i, r := range []io.Reader{r1, r2} {
					if _, err := readAll(t, r); err == nil {
						t.Errorf("reader %d: got a complete read; want an error", i)
					}
				}
				if isCommitted(store, d) {
					t.Error("a failed fill was committed")
				}
				// A new request starts a fresh fill with its own fetch.
				do(t, g, t.Context(), d, whole(bytes.NewReader(blob), len(blob)), fill.Led)
			})
		})
	}
}

// cutReader returns n bytes of b and then a cut.
type cutReader struct {
	b []byte
	n int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	if c.n == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	k := copy(p, c.b[:min(len(c.b), c.n)])
	c.b, c.n = c.b[k:], c.n-k
	return k, nil
}

// cutting is a Fetch whose every stream, the first and each resume, is cut
// after n bytes. It records the offsets it was asked for.
type cutting struct {
	blob    []byte
	n       int
	mu      sync.Mutex
	offsets []int64
}

func (c *cutting) fetch(_ context.Context, off int64) (fill.Body, error) {
	c.mu.Lock()
	c.offsets = append(c.offsets, off)
	c.mu.Unlock()
	return fill.Body{ReadCloser: io.NopCloser(&cutReader{b: c.blob[off:], n: c.n}), Size: int64(len(c.blob))}, nil
}

func (c *cutting) calls() []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.offsets)
}

func TestResumeAfterCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := cachestore.NewMemory()
		g := newGroup(t, store, 3)
		blob, d := randomBlob(t, 10000)
		up := &cutting{blob: blob, n: 3000}
		r := do(t, g, t.Context(), d, up.fetch, fill.Led)
		got, err := readAll(t, r)
		if err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("read %d bytes, err %v; want the whole blob", len(got), err)
		}
		if want := []int64{0, 3000, 6000, 9000}; !slices.Equal(up.calls(), want) {
			t.Fatalf("fetched at %v; want %v", up.calls(), want)
		}
	})
}

func TestResumeGivesUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, cachestore.NewMemory(), 2)
		blob, d := randomBlob(t, 10000)
		up := &cutting{blob: blob, n: 10}
		r := do(t, g, t.Context(), d, up.fetch, fill.Led)
		if _, err := readAll(t, r); err == nil {
			t.Fatal("read succeeded; want the cut reported after the resumes ran out")
		}
		if calls := len(up.calls()) - 1; calls != 2 {
			t.Fatalf("resume calls = %d; want 2", calls)
		}
	})
}

func TestFillOutlivesItsClients(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := cachestore.NewMemory()
		g := newGroup(t, store, 0)
		blob, d := randomBlob(t, 64<<10)
		clientCtx, cancel := context.WithCancel(t.Context())
		pr, pw := io.Pipe()
		var fillCtx context.Context
		r := do(t, g, clientCtx, d, func(ctx context.Context, _ int64) (fill.Body, error) {
			fillCtx = ctx
			return fill.Body{ReadCloser: pr, Size: int64(len(blob))}, nil
		}, fill.Led)
		cancel() // the client that started the fill goes away
		if _, err := readAll(t, r); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled reader: %v; want context.Canceled", err)
		}
		r.Close()
		if fillCtx.Err() != nil {
			t.Fatal("the fill's context ended with its client's")
		}
		go func() { pw.Write(blob); pw.Close() }()
		synctest.Wait()
		if !isCommitted(store, d) {
			t.Fatal("the fill stopped with its client")
		}
	})
}

func TestUnknownSize(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, cachestore.NewMemory(), 0)
		blob, d := randomBlob(t, 5000)
		r := do(t, g, t.Context(), d, func(context.Context, int64) (fill.Body, error) {
			return fill.Body{ReadCloser: io.NopCloser(bytes.NewReader(blob)), Size: -1}, nil
		}, fill.Led)
		if r.Size != -1 {
			t.Fatalf("Size = %d; want -1", r.Size)
		}
		if got, err := readAll(t, r); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("read %d bytes, err %v", len(got), err)
		}
		if _, err := r.Seek(0, io.SeekEnd); err == nil {
			t.Fatal("SeekEnd on unknown size succeeded")
		}
	})
}

func TestCloseStopsRunningFills(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := cachestore.NewMemory()
		g := fill.New(fill.Config{Store: store, SpoolDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
		_, d := randomBlob(t, 10)
		r := do(t, g, t.Context(), d, func(ctx context.Context, _ int64) (fill.Body, error) {
			return fill.Body{ReadCloser: ctxReader{ctx}, Size: 10}, nil
		}, fill.Led)
		g.Close()
		if _, err := readAll(t, r); err == nil {
			t.Fatal("fill completed after Close")
		}
		if _, err := g.Do(t.Context(), d, never(t)); !errors.Is(err, fill.ErrClosed) {
			t.Fatalf("Do after Close: %v; want ErrClosed", err)
		}
	})
}

// ctxReader blocks until ctx ends, like an upstream body whose request was
// cancelled.
type ctxReader struct{ ctx context.Context }

func (c ctxReader) Read([]byte) (int, error) { <-c.ctx.Done(); return 0, c.ctx.Err() }
func (c ctxReader) Close() error             { return nil }

func TestEveryReaderOfAFinishingFillReadsTheBlob(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := cachestore.NewMemory()
		g := newGroup(t, store, 0)
		blob, d := randomBlob(t, 100)
		var fetches atomic.Int32
		fetch := func(context.Context, int64) (fill.Body, error) {
			fetches.Add(1)
			return fill.Body{ReadCloser: io.NopCloser(bytes.NewReader(blob)), Size: int64(len(blob))}, nil
		}
		// A small blob can be filled and committed while requests still
		// ask for it. Every reader Do hands out must read the whole blob,
		// and no request fetches it again.
		for range 100 {
			b, err := g.Do(t.Context(), d, fetch)
			if err != nil {
				t.Fatal(err)
			}
			got, err := readAll(t, b)
			b.Close()
			if err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("reader from %v: %d bytes, %v", b.Source, len(got), err)
			}
			if b.Source == fill.Hit {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if n := fetches.Load(); n != 1 {
			t.Fatalf("%d fetches; want 1", n)
		}
	})
}

// brokenStore accepts writes but fails every commit, like a full disk.
type brokenStore struct{ cachestore.Store }

func (s brokenStore) Create(ctx context.Context, key string, opts cachestore.Options) (cachestore.Writer, error) {
	w, err := s.Store.Create(ctx, key, opts)
	return brokenWriter{w}, err
}

type brokenWriter struct{ cachestore.Writer }

func (brokenWriter) Commit(context.Context, digest.Digest) error { return errors.New("disk full") }

func TestVerifiedBytesReachReadersEvenIfCommitFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := brokenStore{cachestore.NewMemory()}
		g := newGroup(t, store, 0)
		blob, d := randomBlob(t, 3000)
		pr, pw := io.Pipe()
		r := do(t, g, t.Context(), d, whole(pr, len(blob)), fill.Led)
		go func() { pw.Write(blob); pw.Close() }()
		if got, err := readAll(t, r); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("reader of a verified blob whose commit failed: %d bytes, %v; want the blob", len(got), err)
		}
		synctest.Wait()
		if g.InFlight() != 0 || isCommitted(store, d) {
			t.Fatalf("after a failed commit: %d in flight, committed %v; want 0, false", g.InFlight(), isCommitted(store, d))
		}
	})
}
