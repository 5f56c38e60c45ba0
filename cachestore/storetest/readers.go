package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// open opens key, failing the test on error, and closes it at the end.
func open(t *testing.T, s cachestore.Store, key string) cachestore.Reader {
	t.Helper()
	r, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// testReadPastEnd reads at and past the end of an entry, as a Range request
// beyond the size of a blob would, typed and not, and of an empty entry.
func testReadPastEnd(t *testing.T, s cachestore.Store) {
	for _, shape := range entryShapes {
		t.Run(shape.name, func(t *testing.T) {
			t.Parallel()
			readPastEnd(t, s, shape.key, shape.opts)
		})
	}
}

func readPastEnd(t *testing.T, s cachestore.Store, keyOf func(digest.Digest) string, opts cachestore.Options) {
	data := data(12, 5000)
	key := keyOf(digest.FromBytes(data))
	put(t, s, key, opts, data)
	r := open(t, s, key)
	buf := make([]byte, 100)
	for _, off := range []int64{5000, 5001, 1 << 40} {
		if n, err := r.ReadAt(buf, off); n != 0 || !errors.Is(err, io.EOF) {
			t.Errorf("ReadAt(100 bytes, %d) of 5000 bytes = %d, %v; want 0, io.EOF", off, n, err)
		}
	}
	// A read that starts inside and ends past the end.
	if n, err := r.ReadAt(buf, 4950); n != 50 || !errors.Is(err, io.EOF) || !bytes.Equal(buf[:n], data[4950:]) {
		t.Errorf("ReadAt(100 bytes, 4950) of 5000 bytes = %d, %v; want the last 50 bytes, io.EOF", n, err)
	}
	if pos, err := r.Seek(6000, io.SeekStart); pos != 6000 || err != nil {
		t.Fatalf("Seek(6000, io.SeekStart) = %d, %v; want 6000, nil", pos, err)
	}
	if n, err := r.Read(buf); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("Read past the end = %d, %v; want 0, io.EOF", n, err)
	}
	if _, err := r.Seek(-1, io.SeekStart); err == nil {
		t.Error("Seek(-1, io.SeekStart) = nil error, want an error")
	}
	// The reader still works from a valid position, up to the end.
	if _, err := r.Seek(-10, io.SeekEnd); err != nil {
		t.Fatalf("Seek(-10, io.SeekEnd): %v", err)
	}
	if got, err := io.ReadAll(r); !bytes.Equal(got, data[4990:]) || err != nil {
		t.Errorf("ReadAll of the last 10 bytes = %x, %v; want %x, nil", got, err, data[4990:])
	}

	empty := keyOf(digest.FromBytes(nil))
	put(t, s, empty, opts, nil)
	r = open(t, s, empty)
	if r.Size() != 0 {
		t.Errorf("empty entry: Size = %d, want 0", r.Size())
	}
	if n, err := r.Read(buf); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("empty entry: Read = %d, %v; want 0, io.EOF", n, err)
	}
	if n, err := r.ReadAt(buf, 0); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("empty entry: ReadAt(100 bytes, 0) = %d, %v; want 0, io.EOF", n, err)
	}
}

// testStopEarly closes readers that read only part of an entry, as a client
// that disconnects mid-blob does. The store must stay usable, and the
// backend's TestMain checks with goleak that nothing is left running.
func testStopEarly(t *testing.T, s cachestore.Store) {
	for _, shape := range entryShapes {
		t.Run(shape.name, func(t *testing.T) {
			t.Parallel()
			stopEarly(t, s, shape.key, shape.opts)
		})
	}
}

func stopEarly(t *testing.T, s cachestore.Store, keyOf func(digest.Digest) string, opts cachestore.Options) {
	data := data(13, 1<<20+5)
	key := keyOf(digest.FromBytes(data))
	put(t, s, key, opts, data)
	stops := []struct {
		name string
		read func(r cachestore.Reader) (got, want []byte, err error)
	}{
		{"nothing read", func(cachestore.Reader) ([]byte, []byte, error) { return nil, nil, nil }},
		{"one byte", readFirst(1, data)},
		{"100000 bytes", readFirst(100000, data)},
		{"all but one byte", readFirst(len(data)-1, data)},
		{"after a seek", func(r cachestore.Reader) ([]byte, []byte, error) {
			if _, err := r.Seek(700000, io.SeekStart); err != nil {
				return nil, nil, err
			}
			got := make([]byte, 5000)
			_, err := io.ReadFull(r, got)
			return got, data[700000:705000], err
		}},
		{"ReadAt only", func(r cachestore.Reader) ([]byte, []byte, error) {
			got := make([]byte, 5000)
			_, err := r.ReadAt(got, 300000)
			return got, data[300000:305000], err
		}},
	}
	for _, st := range stops {
		t.Run(st.name, func(t *testing.T) {
			r, err := s.Open(t.Context(), key)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			got, want, err := st.read(r)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("read %d bytes: %v, or they differ from the data", len(want), err)
			}
			if err := r.Close(); err != nil {
				t.Errorf("Close = %v, want nil", err)
			}
		})
	}
	wantContent(t, s, key, data)
}

// readFirst reads the first n bytes of data's entry.
func readFirst(n int, data []byte) func(r cachestore.Reader) ([]byte, []byte, error) {
	return func(r cachestore.Reader) ([]byte, []byte, error) {
		got := make([]byte, n)
		_, err := io.ReadFull(r, got)
		return got, data[:n], err
	}
}

// testMediaType stores entries with and without media types, and checks
// that each reads back as it was committed: the first commit's for a
// Content key, the last one's for a Record.
func testMediaType(t *testing.T, s cachestore.Store) {
	data := data(14, 700)
	d := digest.FromBytes(data)
	types := []string{
		"application/vnd.oci.image.manifest.v1+json",
		"application/vnd.docker.distribution.manifest.list.v2+json",
		"application/vnd.oci.image.index.v1+json; charset=utf-8",
		"text/plain",
	}
	for i, mt := range types {
		key := cachestore.ManifestKey(digest.FromString(mt))
		put(t, s, key, typed(mt), data)
		wantEntry(t, s, key, data, mt)
		tag := cachestore.TagKey(fmt.Sprintf("7a%d", i))
		put(t, s, tag, cachestore.Options{Kind: cachestore.Record, MediaType: mt}, data)
		wantEntry(t, s, tag, data, mt)
	}
	key := cachestore.BlobKey(d)
	put(t, s, key, content, data)
	wantEntry(t, s, key, data, "")
}
