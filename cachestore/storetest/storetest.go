// Package storetest is the conformance suite that every cachestore backend
// runs. It owns the behaviour all backends share (errors, visibility,
// verification, the two kinds of entry, media types, key checks, reads past
// the end and readers closed early, the optional FileImporter, Deleter and
// Stater extensions) and that of two store instances over one storage, as
// two replicas sharing one Azure container, or two processes on one disk
// cache, are; what a backend does on its own medium is tested beside it.
package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// Run runs the suite. newStorage is called once per subtest, and returns a
// function that opens a store over one new, empty storage: each call opens
// another instance over that same storage, as a second replica or process
// would. A backend that keeps its entries to itself (Memory) returns the
// same store each time. The subtests run in parallel.
func Run(t *testing.T, newStorage func(t *testing.T) (open func() cachestore.Store)) {
	one := func(fn func(t *testing.T, s cachestore.Store)) func(*testing.T, func() cachestore.Store) {
		return func(t *testing.T, open func() cachestore.Store) { fn(t, open()) }
	}
	two := func(fn func(t *testing.T, a, b cachestore.Store)) func(*testing.T, func() cachestore.Store) {
		return func(t *testing.T, open func() cachestore.Store) { fn(t, open(), open()) }
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, open func() cachestore.Store)
	}{
		{"Missing", one(testMissing)},
		{"RoundTrip", one(testRoundTrip)},
		{"SeekAndReadAt", one(testSeekAndReadAt)},
		{"InvisibleBeforeCommit", one(testInvisibleBeforeCommit)},
		{"DigestMismatch", one(testDigestMismatch)},
		{"Cancel", one(testCancel)},
		{"CancelAfterCommit", one(testCancelAfterCommit)},
		{"ConcurrentWriters", one(testConcurrentWriters)},
		{"ContentFirstCommitWins", one(testContentFirstCommitWins)},
		{"RecordOverwrite", one(testRecordOverwrite)},
		{"InvalidKeys", one(testInvalidKeys)},
		{"InvalidOptions", one(testInvalidOptions)},
		{"MediaType", one(testMediaType)},
		{"ReadPastEnd", one(testReadPastEnd)},
		{"StopEarly", one(testStopEarly)},
		{"ImportFile", one(testImportFile)},
		{"ImportFileExisting", one(testImportFileExisting)},
		{"ImportFileSizeMismatch", one(testImportFileSizeMismatch)},
		{"Delete", one(testDelete)},
		{"SharedVisibility", two(testSharedVisibility)},
		{"SharedConcurrentContentCommits", two(testSharedConcurrentCommits)},
		{"SharedRecordOverwrite", two(testSharedRecordOverwrite)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newStorage(t))
		})
	}
}

// Options of the entries the suite writes.
var (
	content = cachestore.Options{Kind: cachestore.Content}
	record  = cachestore.Options{Kind: cachestore.Record}
)

// typed returns Content options with a media type.
func typed(mediaType string) cachestore.Options {
	return cachestore.Options{Kind: cachestore.Content, MediaType: mediaType}
}

const manifestType = "application/vnd.oci.image.manifest.v1+json"

// data returns n deterministic bytes that differ for different seeds, so
// that a shifted or truncated read cannot pass by accident.
func data(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i>>8) ^ seed
	}
	return b
}

// put stores data under key with opts, failing the test on any error.
func put(t *testing.T, s cachestore.Store, key string, opts cachestore.Options, data []byte) {
	t.Helper()
	if err := commit(t, s, key, opts, data, 1000); err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
}

// commit writes data to a new writer of key in pieces of chunk bytes, as a
// network copy would, and commits it under its digest.
func commit(t *testing.T, s cachestore.Store, key string, opts cachestore.Options, data []byte, chunk int) error {
	w, err := s.Create(t.Context(), key, opts)
	if err != nil {
		return err
	}
	defer w.Cancel()
	for p := data; len(p) > 0; p = p[min(len(p), chunk):] {
		if _, err := w.Write(p[:min(len(p), chunk)]); err != nil {
			return err
		}
	}
	return w.Commit(t.Context(), digest.FromBytes(data))
}

// writeChunks writes data in uneven pieces, as a network copy would.
func writeChunks(t *testing.T, w io.Writer, data []byte) {
	t.Helper()
	for len(data) > 0 {
		n := min(len(data), 1000)
		if _, err := w.Write(data[:n]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		data = data[n:]
	}
}

// get reads the entry under key and its media type, checking that Size
// agrees with what it read, and that a Stater finds the entry.
func get(t *testing.T, s cachestore.Store, key string) ([]byte, string) {
	t.Helper()
	r, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	if r.Size() != int64(len(got)) {
		t.Errorf("%q: Reader size %d, read %d bytes; want them equal", key, r.Size(), len(got))
	}
	if st, ok := s.(cachestore.Stater); ok {
		e, err := st.Stat(t.Context(), key)
		if err != nil || e.Key != key || e.Size < int64(len(got)) || e.LastUse.IsZero() {
			t.Errorf("Stat(%q) = %+v, %v; want the entry, of at least %d bytes, with a last use", key, e, err, len(got))
		}
	}
	return got, r.MediaType()
}

// wantContent fails unless the entry under key holds want.
func wantContent(t *testing.T, s cachestore.Store, key string, want []byte) {
	t.Helper()
	if got, _ := get(t, s, key); !bytes.Equal(got, want) {
		t.Errorf("%q holds %d bytes that differ from the %d written", key, len(got), len(want))
	}
}

// wantEntry fails unless the entry under key holds want with mediaType.
func wantEntry(t *testing.T, s cachestore.Store, key string, want []byte, mediaType string) {
	t.Helper()
	got, mt := get(t, s, key)
	if !bytes.Equal(got, want) {
		t.Errorf("%q holds %d bytes that differ from the %d written", key, len(got), len(want))
	}
	if mt != mediaType {
		t.Errorf("%q: MediaType = %q, want %q", key, mt, mediaType)
	}
}

// wantNotFound fails unless Open (and Stat, for a Stater) of key report
// ErrNotFound.
func wantNotFound(t *testing.T, s cachestore.Store, key string) {
	t.Helper()
	if st, ok := s.(cachestore.Stater); ok {
		if _, err := st.Stat(t.Context(), key); !errors.Is(err, cachestore.ErrNotFound) {
			t.Errorf("Stat(%q) = %v, want ErrNotFound", key, err)
		}
	}
	r, err := s.Open(t.Context(), key)
	if !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("Open(%q) = %v, want ErrNotFound", key, err)
	}
	if r != nil {
		r.Close()
	}
}

func testMissing(t *testing.T, s cachestore.Store) {
	wantNotFound(t, s, cachestore.BlobKey(digest.FromString("missing")))
	wantNotFound(t, s, cachestore.TagKey("ff01"))
}

func testRoundTrip(t *testing.T, s cachestore.Store) {
	tests := []struct {
		name string
		key  func(d digest.Digest) string
		opts cachestore.Options
		size int
	}{
		{"empty blob", cachestore.BlobKey, content, 0},
		{"small blob", cachestore.BlobKey, content, 100},
		{"large blob", cachestore.BlobKey, content, 1<<20 + 3},
		{"manifest", cachestore.ManifestKey, typed(manifestType), 2000},
		{"empty typed entry", cachestore.ManifestKey, typed(manifestType), 0},
		{"large typed entry", cachestore.ManifestKey, typed(manifestType), 1<<20 + 3},
		{"tag", func(digest.Digest) string { return cachestore.TagKey("ff01ab") }, record, 64},
		{"typed record", func(digest.Digest) string { return cachestore.TagKey("ff01ac") }, cachestore.Options{Kind: cachestore.Record, MediaType: "text/plain"}, 64},
		{"one-character name", func(digest.Digest) string { return "x/y" }, record, 10},
		{"one component", func(digest.Digest) string { return "z" }, typed("a/b"), 10},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			data := data(byte(i), tt.size)
			key := tt.key(digest.FromBytes(data))
			put(t, s, key, tt.opts, data)
			wantEntry(t, s, key, data, tt.opts.MediaType)
		})
	}
}

// entryShapes are the two shapes an entry's bytes can take in a store:
// with and without a media type (on disk, with and without the line in
// front of the body). Reads are checked on both.
var entryShapes = []struct {
	name string
	key  func(d digest.Digest) string
	opts cachestore.Options
}{
	{"untyped", cachestore.BlobKey, content},
	{"typed", cachestore.ManifestKey, typed(manifestType)},
}

func testSeekAndReadAt(t *testing.T, s cachestore.Store) {
	for _, shape := range entryShapes {
		t.Run(shape.name, func(t *testing.T) {
			t.Parallel()
			data := data(1, 10000)
			key := shape.key(digest.FromBytes(data))
			put(t, s, key, shape.opts, data)
			r, err := s.Open(t.Context(), key)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			t.Cleanup(func() { r.Close() })
			t.Run("Seek", func(t *testing.T) { checkSeek(t, r, data) })
			for _, off := range []int64{0, 1, 4095, 9900, 9999, 10000} {
				t.Run(fmt.Sprint("ReadAt", off), func(t *testing.T) {
					t.Parallel()
					checkReadAt(t, r, data, off)
				})
			}
		})
	}
}

// checkReadAt reads 100 bytes at off with ReadAt.
func checkReadAt(t *testing.T, r cachestore.Reader, data []byte, off int64) {
	buf := make([]byte, 100)
	n, err := r.ReadAt(buf, off)
	want := data[off:min(off+100, int64(len(data)))]
	if !bytes.Equal(buf[:n], want) {
		t.Errorf("ReadAt(100 bytes, %d) read %d bytes, want %d equal to the data", off, n, len(want))
	}
	if n < len(buf) && !errors.Is(err, io.EOF) {
		t.Errorf("ReadAt(100 bytes, %d) short read error = %v, want io.EOF", off, err)
	}
	if n == len(buf) && err != nil {
		t.Errorf("ReadAt(100 bytes, %d) full read error = %v, want nil", off, err)
	}
}

// checkSeek moves r around and checks what it reads at each place.
func checkSeek(t *testing.T, r cachestore.Reader, data []byte) {
	steps := []struct {
		offset int64
		whence int
		pos    int64
	}{
		{5000, io.SeekStart, 5000},
		{-10, io.SeekEnd, int64(len(data)) - 10},
		{-100, io.SeekCurrent, int64(len(data)) - 110},
		{0, io.SeekStart, 0},
	}
	for _, st := range steps {
		pos, err := r.Seek(st.offset, st.whence)
		if err != nil || pos != st.pos {
			t.Fatalf("Seek(%d, %d) = %d, %v; want %d, nil", st.offset, st.whence, pos, err, st.pos)
		}
		got := make([]byte, 10)
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatalf("read 10 bytes at %d: %v", pos, err)
		}
		if want := data[pos : pos+10]; !bytes.Equal(got, want) {
			t.Errorf("read at %d = %x, want %x", pos, got, want)
		}
		// Step back so that the next relative step starts from pos.
		if _, err := r.Seek(-10, io.SeekCurrent); err != nil {
			t.Fatalf("Seek(-10, io.SeekCurrent): %v", err)
		}
	}
}

func testInvisibleBeforeCommit(t *testing.T, s cachestore.Store) {
	data := data(2, 5000)
	key := cachestore.BlobKey(digest.FromBytes(data))
	w, err := s.Create(t.Context(), key, content)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	defer w.Cancel()
	writeChunks(t, w, data)
	wantNotFound(t, s, key)
	if err := w.Commit(t.Context(), digest.FromBytes(data)); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	wantContent(t, s, key, data)
}

func testInvalidKeys(t *testing.T, s cachestore.Store) {
	keys := []string{"", "../x", "/abs", "a//b", "a/../b", "A/b", "a/.hidden",
		"a/", "a/b\x00", "a\\b", "a/b~typed", "blobs/sha256/" + strings.Repeat("a", 600)}
	for _, key := range keys {
		t.Run(fmt.Sprintf("%.20q", key), func(t *testing.T) {
			t.Parallel()
			if st, ok := s.(cachestore.Stater); ok {
				if _, err := st.Stat(t.Context(), key); !errors.Is(err, cachestore.ErrInvalidKey) {
					t.Errorf("Stat(%q) = %v, want ErrInvalidKey", key, err)
				}
			}
			if _, err := s.Open(t.Context(), key); !errors.Is(err, cachestore.ErrInvalidKey) {
				t.Errorf("Open(%q) = %v, want ErrInvalidKey", key, err)
			}
			for _, opts := range []cachestore.Options{content, record, typed(manifestType)} {
				w, err := s.Create(t.Context(), key, opts)
				if !errors.Is(err, cachestore.ErrInvalidKey) {
					t.Errorf("Create(%q, %+v) = %v, want ErrInvalidKey", key, opts, err)
				}
				if w != nil {
					w.Cancel()
				}
			}
			if d, ok := s.(cachestore.Deleter); ok {
				if err := d.Delete(t.Context(), key); !errors.Is(err, cachestore.ErrInvalidKey) {
					t.Errorf("Delete(%q) = %v, want ErrInvalidKey", key, err)
				}
			}
		})
	}
}

// testInvalidOptions creates entries of no kind, or with media types no
// store can keep (Azure's Content-Type is an HTTP header).
func testInvalidOptions(t *testing.T, s cachestore.Store) {
	key := cachestore.ManifestKey(digest.FromString("x"))
	for _, opts := range []cachestore.Options{
		{},
		{Kind: 3},
		{MediaType: manifestType},
		{Kind: cachestore.Content, MediaType: "a/b\nc"},
		{Kind: cachestore.Record, MediaType: "a/b\r"},
		{Kind: cachestore.Content, MediaType: "a/\u00e9"},
		{Kind: cachestore.Content, MediaType: strings.Repeat("a", cachestore.MaxMediaType+1)},
	} {
		w, err := s.Create(t.Context(), key, opts)
		if !errors.Is(err, cachestore.ErrInvalidOptions) {
			t.Errorf("Create(%+v) = %v, want ErrInvalidOptions", opts, err)
		}
		if w != nil {
			w.Cancel()
		}
	}
	wantNotFound(t, s, key)
	// The longest media type is kept whole.
	long := "application/" + strings.Repeat("x", cachestore.MaxMediaType-len("application/"))
	put(t, s, key, typed(long), []byte("x"))
	wantEntry(t, s, key, []byte("x"), long)
}
