// Package storetest is the conformance suite that every cachestore backend
// runs. It owns the behaviour all backends share (errors, visibility,
// verification, key checks, reads past the end and readers closed early, and
// the optional FileImporter, Deleter and media type extensions), and with
// RunShared that of two stores over one storage; what a backend does on its
// own medium is tested beside it.
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

// Run runs the suite. newStore returns an empty store for one subtest; the
// subtests run in parallel, each on its own store.
func Run(t *testing.T, newStore func(t *testing.T) cachestore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s cachestore.Store)
	}{
		{"Missing", testMissing},
		{"RoundTrip", testRoundTrip},
		{"SeekAndReadAt", testSeekAndReadAt},
		{"InvisibleBeforeCommit", testInvisibleBeforeCommit},
		{"DigestMismatch", testDigestMismatch},
		{"Cancel", testCancel},
		{"CancelAfterCommit", testCancelAfterCommit},
		{"ConcurrentWriters", testConcurrentWriters},
		{"Overwrite", testOverwrite},
		{"InvalidKeys", testInvalidKeys},
		{"ImportFile", testImportFile},
		{"ImportFileSizeMismatch", testImportFileSizeMismatch},
		{"Delete", testDelete},
		{"ReadPastEnd", testReadPastEnd},
		{"StopEarly", testStopEarly},
		{"MediaType", testMediaType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newStore(t))
		})
	}
}

// content returns n deterministic bytes that differ for different seeds, so
// that a shifted or truncated read cannot pass by accident.
func content(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i>>8) ^ seed
	}
	return b
}

// put stores data under key, failing the test on any error.
func put(t *testing.T, s cachestore.Store, key string, data []byte) {
	t.Helper()
	w, err := s.Create(t.Context(), key)
	if err != nil {
		t.Fatalf("Create(%q): %v", key, err)
	}
	defer w.Cancel()
	writeChunks(t, w, data)
	if err := w.Commit(t.Context(), digest.FromBytes(data)); err != nil {
		t.Fatalf("Commit(%q): %v", key, err)
	}
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

// get reads the entry under key, checking that Stat and Size agree with it.
func get(t *testing.T, s cachestore.Store, key string) []byte {
	t.Helper()
	info, err := s.Stat(t.Context(), key)
	if err != nil {
		t.Fatalf("Stat(%q): %v", key, err)
	}
	r, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	if info.Size != int64(len(got)) || r.Size() != int64(len(got)) {
		t.Errorf("%q: Stat size %d, Reader size %d, read %d bytes; want all equal",
			key, info.Size, r.Size(), len(got))
	}
	if info.ModTime.IsZero() {
		t.Errorf("%q: Stat ModTime is zero", key)
	}
	return got
}

// wantContent fails unless the entry under key holds want.
func wantContent(t *testing.T, s cachestore.Store, key string, want []byte) {
	t.Helper()
	if got := get(t, s, key); !bytes.Equal(got, want) {
		t.Errorf("%q holds %d bytes that differ from the %d written", key, len(got), len(want))
	}
}

// wantNotFound fails unless Stat and Open of key report ErrNotFound.
func wantNotFound(t *testing.T, s cachestore.Store, key string) {
	t.Helper()
	if _, err := s.Stat(t.Context(), key); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("Stat(%q) = %v, want ErrNotFound", key, err)
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
		size int
	}{
		{"empty blob", cachestore.BlobKey, 0},
		{"small blob", cachestore.BlobKey, 100},
		{"large blob", cachestore.BlobKey, 1<<20 + 3},
		{"manifest", cachestore.ManifestKey, 2000},
		{"manifest meta", cachestore.ManifestMetaKey, 50},
		{"tag", func(digest.Digest) string { return cachestore.TagKey("ff01ab") }, 64},
		{"one-character name", func(digest.Digest) string { return "x/y" }, 10},
		{"one component", func(digest.Digest) string { return "z" }, 10},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			data := content(byte(i), tt.size)
			key := tt.key(digest.FromBytes(data))
			put(t, s, key, data)
			wantContent(t, s, key, data)
		})
	}
}

func testSeekAndReadAt(t *testing.T, s cachestore.Store) {
	data := content(1, 10000)
	key := cachestore.BlobKey(digest.FromBytes(data))
	put(t, s, key, data)
	r, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	t.Run("Seek", func(t *testing.T) { checkSeek(t, r, data) })

	for _, off := range []int64{0, 1, 4095, 9900, 9999, 10000} {
		t.Run(fmt.Sprint("ReadAt", off), func(t *testing.T) {
			t.Parallel()
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
		})
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
	data := content(2, 5000)
	key := cachestore.BlobKey(digest.FromBytes(data))
	w, err := s.Create(t.Context(), key)
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
		"a/", "a/b\x00", "a\\b", "blobs/sha256/" + strings.Repeat("a", 600)}
	for _, key := range keys {
		t.Run(fmt.Sprintf("%.20q", key), func(t *testing.T) {
			t.Parallel()
			if _, err := s.Stat(t.Context(), key); !errors.Is(err, cachestore.ErrInvalidKey) {
				t.Errorf("Stat(%q) = %v, want ErrInvalidKey", key, err)
			}
			if _, err := s.Open(t.Context(), key); !errors.Is(err, cachestore.ErrInvalidKey) {
				t.Errorf("Open(%q) = %v, want ErrInvalidKey", key, err)
			}
			w, err := s.Create(t.Context(), key)
			if !errors.Is(err, cachestore.ErrInvalidKey) {
				t.Errorf("Create(%q) = %v, want ErrInvalidKey", key, err)
			}
			if w != nil {
				w.Cancel()
			}
			if d, ok := s.(cachestore.Deleter); ok {
				if err := d.Delete(t.Context(), key); !errors.Is(err, cachestore.ErrInvalidKey) {
					t.Errorf("Delete(%q) = %v, want ErrInvalidKey", key, err)
				}
			}
		})
	}
}
