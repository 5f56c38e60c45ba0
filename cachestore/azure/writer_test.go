package azure

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

func itoa(n int) string { return strconv.Itoa(n) }

// data returns n bytes that differ for each seed.
func data(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13+i>>9) ^ seed
	}
	return b
}

// Options of the entries the tests write.
var (
	content = cachestore.Options{Kind: cachestore.Content}
	record  = cachestore.Options{Kind: cachestore.Record}
)

// put commits b under key as Content.
func put(t *testing.T, s cachestore.Store, key string, b []byte) {
	t.Helper()
	putOpts(t, s, key, content, b)
}

// putOpts commits b under key with opts.
func putOpts(t *testing.T, s cachestore.Store, key string, opts cachestore.Options, b []byte) {
	t.Helper()
	w, err := s.Create(t.Context(), key, opts)
	if err != nil {
		t.Fatalf("Create(%q): %v", key, err)
	}
	defer w.Cancel()
	if _, err := w.Write(b); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := w.Commit(t.Context(), digest.FromBytes(b)); err != nil {
		t.Fatalf("Commit(%q): %v", key, err)
	}
}

// wantData fails unless key's entry holds want.
func wantData(t *testing.T, s cachestore.Store, key string, want []byte) {
	t.Helper()
	r, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("%q: read %d bytes, %v; want the %d written", key, len(got), err, len(want))
	}
}

// wantGone fails unless Stat and Open of key report ErrNotFound.
func wantGone(t *testing.T, s *Store, key string) {
	t.Helper()
	if _, err := s.Stat(t.Context(), key); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("Stat(%q) = %v, want ErrNotFound", key, err)
	}
	if r, err := s.Open(t.Context(), key); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("Open(%q) = %v, want ErrNotFound", key, err)
		if r != nil {
			r.Close()
		}
	}
}

// listBlobs lists the container's blobs; with uncommitted, also those that
// have only uncommitted blocks, which nothing else shows.
func listBlobs(t *testing.T, s *Store, uncommitted bool) []string {
	t.Helper()
	pager := s.c.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{
		Include: container.ListBlobsInclude{UncommittedBlobs: uncommitted},
	})
	var names []string
	for pager.More() {
		page, err := pager.NextPage(t.Context())
		if err != nil {
			t.Fatalf("list blobs: %v", short(err))
		}
		for _, b := range page.Segment.BlobItems {
			names = append(names, *b.Name)
		}
	}
	return names
}

// blockCount returns how many blocks of key's blob are committed and how
// many are staged but uncommitted.
func blockCount(t *testing.T, s *Store, key string) (committed, uncommitted int) {
	t.Helper()
	resp, err := s.c.NewBlockBlobClient(key).GetBlockList(t.Context(), blockblob.BlockListTypeAll, nil)
	if isNotFound(err) {
		return 0, 0 // no block staged yet
	}
	if err != nil {
		t.Fatalf("GetBlockList(%q): %v", key, short(err))
	}
	return len(resp.CommittedBlocks), len(resp.UncommittedBlocks)
}

// waitStaged waits (10 s at most) until key's blob has n uncommitted
// blocks: the writer uploads them in the background.
func waitStaged(t *testing.T, s *Store, key string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, staged := blockCount(t, s, key); staged < n; _, staged = blockCount(t, s, key) {
		if time.Now().After(deadline) {
			t.Fatalf("%d blocks staged 10s after writing %d full ones", staged, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStagesWhileWriting checks that full blocks are uploaded while the
// writer is still open, yet the entry stays invisible until Commit.
func TestStagesWhileWriting(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	b := data(1, 5*cfg.BlockSize+100)
	key := cachestore.BlobKey(digest.FromBytes(b))
	w, err := s.Create(t.Context(), key, content)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	waitStaged(t, s, key, 5)
	wantGone(t, s, key)
	if got := listBlobs(t, s, false); len(got) != 0 {
		t.Errorf("blobs listed before Commit: %q, want none", got)
	}
	if err := w.Commit(t.Context(), digest.FromBytes(b)); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if committed, uncommitted := blockCount(t, s, key); committed != 6 || uncommitted != 0 {
		t.Errorf("after Commit: %d blocks committed, %d not; want 6 and 0", committed, uncommitted)
	}
	wantData(t, s, key, b)
}

// TestDigestMismatchLeavesNothing commits entries under a wrong digest,
// both one put whole and one staged as blocks: nothing is listed.
func TestDigestMismatchLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, size := range []int{100, 300 << 10} {
		for key, opts := range map[string]cachestore.Options{cachestore.BlobKey(digest.FromString("other")): content, cachestore.TagKey("abc"): record} {
			t.Run(itoa(size)+" "+key, func(t *testing.T) {
				t.Parallel()
				s := newStore(t, testConfig(t))
				w, err := s.Create(t.Context(), key, opts)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := w.Write(data(2, size)); err != nil {
					t.Fatal(err)
				}
				if err := w.Commit(t.Context(), digest.FromString("other")); !errors.Is(err, cachestore.ErrDigestMismatch) {
					t.Errorf("Commit = %v, want ErrDigestMismatch", err)
				}
				wantGone(t, s, key)
				if got := listBlobs(t, s, false); len(got) != 0 {
					t.Errorf("blobs listed after a failed Commit: %q, want none", got)
				}
			})
		}
	}
}

// TestCancelLeavesNothing cancels a writer that staged blocks. Its blocks
// stay in Azure, uncommitted: invisible to Stat, Open and listings, and
// harmless to the next writer of the key.
func TestCancelLeavesNothing(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	b := data(3, 3*cfg.BlockSize+5)
	key := cachestore.BlobKey(digest.FromBytes(b))
	w, err := s.Create(t.Context(), key, content)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b[:len(b)-5]); err != nil {
		t.Fatal(err)
	}
	waitStaged(t, s, key, 3)
	if err := w.Cancel(); err != nil {
		t.Fatalf("Cancel = %v, want nil", err)
	}
	wantGone(t, s, key)
	if got := listBlobs(t, s, false); len(got) != 0 {
		t.Errorf("blobs listed after Cancel: %q, want none", got)
	}
	// Only a listing that asks for uncommitted blobs shows the blocks.
	if got := listBlobs(t, s, true); !slices.Equal(got, []string{key}) {
		t.Errorf("listing with uncommitted blobs = %q, want %q", got, key)
	}

	put(t, s, key, b)
	wantData(t, s, key, b)
	if committed, uncommitted := blockCount(t, s, key); committed != 4 || uncommitted != 0 {
		t.Errorf("after a later Commit: %d blocks committed, %d not; want 4 and 0", committed, uncommitted)
	}
}

// TestCreateContextEnds ends the context given to Create while the writer
// stages blocks: the writer fails and nothing is visible.
func TestCreateContextEnds(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	b := data(4, 4*cfg.BlockSize)
	key := cachestore.BlobKey(digest.FromBytes(b))
	ctx, cancel := context.WithCancel(t.Context())
	w, err := s.Create(ctx, key, content)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	if _, err := w.Write(b[:2*cfg.BlockSize]); err != nil {
		t.Fatal(err)
	}
	cancel()
	_, werr := w.Write(b[2*cfg.BlockSize:])
	cerr := w.Commit(t.Context(), digest.FromBytes(b))
	if werr == nil && cerr == nil {
		t.Error("Write and Commit after Create's context ended both succeeded, want an error")
	}
	wantGone(t, s, key)
}

// TestStagingFails removes the container under a writer: its uploads fail,
// and so do Write or Commit.
func TestStagingFails(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	b := data(5, 6*cfg.BlockSize)
	key := cachestore.BlobKey(digest.FromBytes(b))
	w, err := s.Create(t.Context(), key, content)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	if _, err := s.c.Delete(t.Context(), nil); err != nil {
		t.Fatalf("delete container: %v", short(err))
	}
	_, werr := w.Write(b)
	cerr := w.Commit(t.Context(), digest.FromBytes(b))
	for _, err := range []error{werr, cerr} {
		// Write may return before an upload fails; Commit cannot.
		if err != nil || werr == nil {
			wantOneLine(t, err, "stage block", "HTTP 404 ContainerNotFound")
		}
	}
}

// TestLargeRecordOverwrite overwrites a record that spans several blocks:
// records are committed without a condition, and the last write wins.
func TestLargeRecordOverwrite(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	key := cachestore.TagKey("1a2b")
	for i := range 3 {
		b := data(byte(6+i), 3*cfg.BlockSize-i)
		putOpts(t, s, key, record, b)
		wantData(t, s, key, b)
	}
	if got := listBlobs(t, s, true); !slices.Equal(got, []string{key}) {
		t.Errorf("listing = %q, want %q", got, key)
	}
}

// TestOtherAlgorithms commits entries under sha512 digests: the writer
// hashes sha256 as bytes arrive, so another algorithm can be verified only
// while the entry fits in one block.
func TestOtherAlgorithms(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	big := data(9, 3*cfg.BlockSize+1)
	commit := func(key string, opts cachestore.Options, b []byte, d digest.Digest) error {
		w, err := s.Create(t.Context(), key, opts)
		if err != nil {
			return err
		}
		defer w.Cancel()
		if _, err := w.Write(b); err != nil {
			return err
		}
		return w.Commit(t.Context(), d)
	}
	for _, opts := range []cachestore.Options{content, record} {
		d := digest.SHA512.FromBytes(big)
		if err := commit(cachestore.BlobKey(d), opts, big, d); err == nil {
			t.Errorf("sha512 %v entry of %d bytes: Commit = nil, want an error (cannot verify)", opts.Kind, len(big))
		}
		wantGone(t, s, cachestore.BlobKey(d))
		small := big[:100]
		d = digest.SHA512.FromBytes(small)
		if err := commit(cachestore.BlobKey(d), opts, small, d); err != nil {
			t.Errorf("sha512 %v entry of 100 bytes: %v", opts.Kind, err)
		}
		wantData(t, s, cachestore.BlobKey(d), small)
	}
}

// TestCommitOverUncommittedBlocks commits a small entry under a key whose
// blob holds uncommitted blocks of a failed, larger writer (a broken
// upstream sent too many bytes).
func TestCommitOverUncommittedBlocks(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	b := data(16, 1000)
	d := digest.FromBytes(b)
	key := cachestore.BlobKey(d)
	w, err := s.Create(t.Context(), key, content)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data(17, 3*cfg.BlockSize)); err != nil {
		t.Fatal(err)
	}
	waitStaged(t, s, key, 3)
	if err := w.Commit(t.Context(), d); !errors.Is(err, cachestore.ErrDigestMismatch) {
		t.Fatalf("Commit of the wrong bytes = %v, want ErrDigestMismatch", err)
	}
	put(t, s, key, b)
	wantData(t, s, key, b)
}

// stalled holds every block upload (PUT ?comp=block) of a store until
// release is closed, and counts them.
type stalled struct {
	inner   http.RoundTripper
	release chan struct{}
	stages  atomic.Int64
}

func (s *stalled) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut && r.URL.Query().Get("comp") == "block" {
		s.stages.Add(1)
		select {
		case <-s.release:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	return s.inner.RoundTrip(r)
}

func (s *stalled) CloseIdleConnections() {
	s.inner.(interface{ CloseIdleConnections() }).CloseIdleConnections()
}

// TestWriterMemoryBound checks that a writer holds at most BlocksInFlight
// blocks, the one it fills included: while the uploads are stalled, Write
// takes BlocksInFlight blocks' worth of bytes and waits for the rest; once
// they go on, the entry is whole.
func TestWriterMemoryBound(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	st := &stalled{inner: s.hc.Transport, release: make(chan struct{})}
	s.hc.Transport = st
	b := data(7, 5*cfg.BlockSize+10)
	key := cachestore.BlobKey(digest.FromBytes(b))
	w, err := s.Create(t.Context(), key, content)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	var written atomic.Int64
	done := make(chan error, 1)
	go func() {
		var err error
		for off := 0; off < len(b) && err == nil; off += 1 << 10 { // a divisor of the block size
			var n int
			n, err = w.Write(b[off:min(off+1<<10, len(b))])
			written.Add(int64(n))
		}
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for st.stages.Load() < int64(cfg.BlocksInFlight) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // Write would go on now, if it could
	if n, want := written.Load(), int64(cfg.BlocksInFlight*cfg.BlockSize); n != want {
		t.Errorf("with the uploads stalled, Write took %d bytes; want %d (%d blocks)", n, want, cfg.BlocksInFlight)
	}
	if n := st.stages.Load(); n != int64(cfg.BlocksInFlight) {
		t.Errorf("%d uploads started; want %d", n, cfg.BlocksInFlight)
	}
	close(st.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context(), digest.FromBytes(b)); err != nil {
		t.Fatal(err)
	}
	wantData(t, s, key, b)
}
