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
	"testing"
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
	g := fill.New(fill.Config{Store: store, SpoolDir: t.TempDir(), MaxResumes: maxResumes,
		Timeout: time.Minute, Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(g.Close)
	return g
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

func TestJoinersShareOneFillAndStreamBeforeCompletion(t *testing.T) {
	store := cachestore.NewMemory()
	g := newGroup(t, store, 0)
	blob, d := randomBlob(t, 1<<20)
	pr, pw := io.Pipe()

	f, leader, err := g.Join(context.Background(), d)
	if err != nil || !leader {
		t.Fatalf("first Join: leader=%v err=%v; want leader", leader, err)
	}
	f.Start(fill.Body{Reader: pr, Size: int64(len(blob))})
	half := len(blob) / 2
	pw.Write(blob[:half])

	const joiners = 8
	readers := make([]*fill.Reader, joiners)
	for i := range readers {
		j, leader, err := g.Join(context.Background(), d)
		if err != nil || leader || j != f {
			t.Fatalf("Join %d: leader=%v same=%v err=%v; want to join the running fill", i, leader, j == f, err)
		}
		if readers[i], err = j.NewReader(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer readers[i].Close()
	}
	// Bytes flow before the fill completes, from byte 0 for late joiners.
	for i, r := range readers {
		if got := readN(t, r, half); !bytes.Equal(got, blob[:half]) {
			t.Fatalf("reader %d: first half differs", i)
		}
	}
	pw.Write(blob[half:])
	pw.Close()
	var wg sync.WaitGroup
	for i, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rest, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(rest, blob[half:]) {
				t.Errorf("reader %d: rest %d bytes err %v", i, len(rest), err)
			}
		}()
	}
	wg.Wait()
	// Readers finish once the digest is verified; the commit (fsync and
	// rename) may still be under way.
	waitFor(t, func() bool { return g.InFlight() == 0 })
	if _, err := store.Stat(context.Background(), cachestore.BlobKey(d)); err != nil {
		t.Fatalf("blob not committed: %v", err)
	}
}

func TestLastByteWithheldUntilVerified(t *testing.T) {
	g := newGroup(t, cachestore.NewMemory(), 0)
	blob, d := randomBlob(t, 4096)
	pr, pw := io.Pipe()
	f, _, _ := g.Join(context.Background(), d)
	f.Start(fill.Body{Reader: pr, Size: int64(len(blob))})
	pw.Write(blob) // every byte, but no EOF yet: not verified
	r := mustReader(t, f, context.Background())
	defer r.Close()
	readN(t, r, len(blob)-1)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	r2, _ := f.NewReader(ctx)
	defer r2.Close()
	r2.Seek(int64(len(blob)-1), io.SeekStart)
	if n, err := r2.Read(make([]byte, 1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read of the last byte before EOF upstream: n=%d err=%v; want to block", n, err)
	}
	pw.Close()
	if rest, err := readAll(t, r); err != nil || !bytes.Equal(rest, blob[len(blob)-1:]) {
		t.Fatalf("after verification: %q, %v", rest, err)
	}
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
			store := cachestore.NewMemory()
			g := newGroup(t, store, -1)
			blob, d := randomBlob(t, 1000)
			pr, pw := io.Pipe()
			f, _, _ := g.Join(context.Background(), d)
			f.Start(fill.Body{Reader: pr, Size: int64(len(blob))})
			r1 := mustReader(t, f, context.Background())
			r2 := mustReader(t, f, context.Background())
			defer r1.Close()
			defer r2.Close()
			go tc.feed(pw, blob)
			for i, r := range []*fill.Reader{r1, r2} {
				if _, err := readAll(t, r); err == nil {
					t.Errorf("reader %d: got a complete read; want an error", i)
				}
			}
			if _, err := store.Stat(context.Background(), cachestore.BlobKey(d)); !errors.Is(err, cachestore.ErrNotFound) {
				t.Errorf("Stat after failed fill: %v; want ErrNotFound", err)
			}
			again, leader, _ := g.Join(context.Background(), d)
			if !leader {
				t.Fatal("Join after failure joined the dead fill; want a fresh fill")
			}
			again.Abandon()
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

func TestResumeAfterCut(t *testing.T) {
	store := cachestore.NewMemory()
	g := newGroup(t, store, 3)
	blob, d := randomBlob(t, 10000)
	var offsets []int64
	resume := func(_ context.Context, off int64) (io.ReadCloser, error) {
		offsets = append(offsets, off)
		return io.NopCloser(&cutReader{b: blob[off:], n: 3000}), nil
	}
	f, _, _ := g.Join(context.Background(), d)
	body := newGate(&cutReader{b: blob, n: 3000})
	f.Start(fill.Body{Reader: body, Size: int64(len(blob)), Resume: resume})
	r := mustReader(t, f, context.Background())
	body.open()
	defer r.Close()
	got, err := readAll(t, r)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("read %d bytes, err %v; want the whole blob", len(got), err)
	}
	if want := []int64{3000, 6000, 9000}; !slices.Equal(offsets, want) {
		t.Fatalf("resumed at %v; want %v", offsets, want)
	}
}

func TestResumeGivesUp(t *testing.T) {
	store := cachestore.NewMemory()
	g := newGroup(t, store, 2)
	blob, d := randomBlob(t, 10000)
	calls := 0
	resume := func(_ context.Context, off int64) (io.ReadCloser, error) {
		calls++
		return io.NopCloser(&cutReader{b: blob[off:], n: 10}), nil
	}
	f, _, _ := g.Join(context.Background(), d)
	body := newGate(&cutReader{b: blob, n: 10})
	f.Start(fill.Body{Reader: body, Size: int64(len(blob)), Resume: resume})
	r := mustReader(t, f, context.Background())
	body.open()
	defer r.Close()
	if _, err := readAll(t, r); err == nil {
		t.Fatal("read succeeded; want the cut reported after the resumes ran out")
	}
	if calls != 2 {
		t.Fatalf("resume calls = %d; want 2", calls)
	}
}

func TestAbandonSendsJoinersBack(t *testing.T) {
	g := newGroup(t, cachestore.NewMemory(), 0)
	_, d := randomBlob(t, 10)
	f, _, _ := g.Join(context.Background(), d)
	joined, leader, _ := g.Join(context.Background(), d)
	if leader {
		t.Fatal("second Join became leader")
	}
	f.Abandon()
	if _, err := joined.NewReader(context.Background()); !errors.Is(err, fill.ErrAbandoned) {
		t.Fatalf("NewReader after Abandon: %v; want ErrAbandoned", err)
	}
	again, leader, _ := g.Join(context.Background(), d)
	if !leader {
		t.Fatal("Join after Abandon did not lead a new fill")
	}
	again.Abandon()
}

func TestFillOutlivesItsClients(t *testing.T) {
	store := cachestore.NewMemory()
	g := newGroup(t, store, 0)
	blob, d := randomBlob(t, 64<<10)
	clientCtx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	f, _, _ := g.Join(clientCtx, d)
	f.Start(fill.Body{Reader: pr, Size: int64(len(blob))})
	r, _ := f.NewReader(clientCtx)
	cancel() // the client that started the fill goes away
	if _, err := readAll(t, r); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled reader: %v; want context.Canceled", err)
	}
	r.Close()
	if f.Context().Err() != nil {
		t.Fatal("the fill's context ended with its client's")
	}
	pw.Write(blob)
	pw.Close()
	waitFor(t, func() bool { _, err := store.Stat(context.Background(), cachestore.BlobKey(d)); return err == nil })
}

func TestUnknownSize(t *testing.T) {
	store := cachestore.NewMemory()
	g := newGroup(t, store, 0)
	blob, d := randomBlob(t, 5000)
	f, _, _ := g.Join(context.Background(), d)
	body := newGate(bytes.NewReader(blob))
	f.Start(fill.Body{Reader: body, Size: -1})
	r := mustReader(t, f, context.Background())
	body.open()
	defer r.Close()
	if got, err := readAll(t, r); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("read %d bytes, err %v", len(got), err)
	}
	if _, err := r.Seek(0, io.SeekEnd); err == nil {
		t.Fatal("SeekEnd on unknown size succeeded")
	}
}

func TestCloseStopsRunningFills(t *testing.T) {
	store := cachestore.NewMemory()
	g := fill.New(fill.Config{Store: store, SpoolDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	_, d := randomBlob(t, 10)
	f, _, _ := g.Join(context.Background(), d)
	f.Start(fill.Body{Reader: ctxReader{f.Context()}, Size: 10})
	r := mustReader(t, f, context.Background())
	defer r.Close()
	g.Close()
	if _, err := readAll(t, r); err == nil {
		t.Fatal("fill completed after Close")
	}
	if _, _, err := g.Join(context.Background(), d); !errors.Is(err, fill.ErrClosed) {
		t.Fatalf("Join after Close: %v; want ErrClosed", err)
	}
}

// ctxReader blocks until ctx ends, like an upstream body whose request was
// cancelled.
type ctxReader struct{ ctx context.Context }

func (c ctxReader) Read([]byte) (int, error) { <-c.ctx.Done(); return 0, c.ctx.Err() }
func (c ctxReader) Close() error             { return nil }

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not met in 10s")
}

func TestReaderAfterTheFillLetGoOfItsFile(t *testing.T) {
	store := cachestore.NewMemory()
	g := newGroup(t, store, 0)
	blob, d := randomBlob(t, 100)
	f, _, _ := g.Join(context.Background(), d)
	f.Start(fill.Body{Reader: io.NopCloser(bytes.NewReader(blob)), Size: int64(len(blob))})
	// A small blob can be filled and committed before the request that
	// started it asks for a reader. Every reader NewReader hands out must
	// read the whole blob; once the spool file is closed it says so.
	for range 1000 {
		r, err := f.NewReader(context.Background())
		if errors.Is(err, fill.ErrFinished) {
			if _, err := store.Stat(context.Background(), cachestore.BlobKey(d)); err != nil {
				t.Fatalf("ErrFinished, but the blob is not in the store: %v", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		got, err := readAll(t, r)
		r.Close()
		if err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("reader of a finishing fill: %d bytes, %v", len(got), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the fill never let go of its spool file")
}

// brokenStore accepts writes but fails every commit, like a full disk.
type brokenStore struct{ cachestore.Store }

func (s brokenStore) Create(ctx context.Context, key string) (cachestore.Writer, error) {
	w, err := s.Store.Create(ctx, key)
	return brokenWriter{w}, err
}

type brokenWriter struct{ cachestore.Writer }

func (brokenWriter) Commit(context.Context, digest.Digest) error { return errors.New("disk full") }

func TestVerifiedBytesReachReadersEvenIfCommitFails(t *testing.T) {
	store := brokenStore{cachestore.NewMemory()}
	g := newGroup(t, store, 0)
	blob, d := randomBlob(t, 3000)
	pr, pw := io.Pipe()
	f, _, _ := g.Join(context.Background(), d)
	f.Start(fill.Body{Reader: pr, Size: int64(len(blob))})
	r, err := f.NewReader(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() { pw.Write(blob); pw.Close() }()
	if got, err := readAll(t, r); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("reader of a verified blob whose commit failed: %d bytes, %v; want the blob", len(got), err)
	}
	waitFor(t, func() bool { return g.InFlight() == 0 })
	if _, err := store.Stat(context.Background(), cachestore.BlobKey(d)); !errors.Is(err, cachestore.ErrNotFound) {
		t.Fatalf("Stat after a failed commit: %v; want ErrNotFound", err)
	}
}

// mustReader is f.NewReader for a test that has made sure the fill is
// still running.
func mustReader(t *testing.T, f *fill.Fill, ctx context.Context) *fill.Reader {
	t.Helper()
	r, err := f.NewReader(ctx)
	if err != nil {
		t.Fatalf("NewReader: %v", err)
	}
	return r
}

// gate holds back a body's first read until open is called, so that a
// test's reader joins before a fast fill can finish and let go of its file.
type gate struct {
	r      io.Reader
	opened chan struct{}
}

func newGate(r io.Reader) *gate { return &gate{r: r, opened: make(chan struct{})} }

func (g *gate) Read(p []byte) (int, error) { <-g.opened; return g.r.Read(p) }
func (g *gate) Close() error               { return nil }
func (g *gate) open()                      { close(g.opened) }
