package storetest

import (
	"errors"
	"io/fs"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// spool writes data to a new file in imp's SpoolDir, as a fill would, and
// returns its name.
func spool(t *testing.T, imp cachestore.FileImporter, data []byte) string {
	t.Helper()
	f, err := os.CreateTemp(imp.SpoolDir(), "storetest-*")
	if err != nil {
		t.Fatalf("create spool file: %v", err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatalf("write spool file: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close spool file: %v", err)
	}
	return f.Name()
}

func testImportFile(t *testing.T, s cachestore.Store) {
	imp, ok := s.(cachestore.FileImporter)
	if !ok {
		t.Skip("store is not a FileImporter")
	}
	data := data(9, 70000)
	d := digest.FromBytes(data)
	key := cachestore.BlobKey(d)
	name := spool(t, imp, data)
	if err := imp.ImportFile(t.Context(), key, name, int64(len(data)), d); err != nil {
		t.Fatalf("ImportFile: %v", err)
	}
	wantEntry(t, s, key, data, "")
	if _, err := os.Stat(name); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("spool file after ImportFile: Stat = %v, want ErrNotExist (moved)", err)
	}

	name = spool(t, imp, data)
	t.Cleanup(func() { os.Remove(name) })
	err := imp.ImportFile(t.Context(), "../escape", name, int64(len(data)), d)
	if !errors.Is(err, cachestore.ErrInvalidKey) {
		t.Errorf("ImportFile(%q) = %v, want ErrInvalidKey", "../escape", err)
	}
}

// testImportFileExisting imports a file under a key that has an entry: the
// entry stays as it was, and the file goes, as after an import.
func testImportFileExisting(t *testing.T, s cachestore.Store) {
	imp, ok := s.(cachestore.FileImporter)
	if !ok {
		t.Skip("store is not a FileImporter")
	}
	first, second := data(15, 3000), data(16, 2000)
	key := cachestore.ManifestKey(digest.FromBytes(first))
	put(t, s, key, typed(manifestType), first)
	name := spool(t, imp, second)
	if err := imp.ImportFile(t.Context(), key, name, int64(len(second)), digest.FromBytes(second)); err != nil {
		t.Fatalf("ImportFile over an entry: %v", err)
	}
	wantEntry(t, s, key, first, manifestType)
	if _, err := os.Stat(name); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("spool file after ImportFile over an entry: Stat = %v, want ErrNotExist (removed)", err)
	}
}

func testImportFileSizeMismatch(t *testing.T, s cachestore.Store) {
	imp, ok := s.(cachestore.FileImporter)
	if !ok {
		t.Skip("store is not a FileImporter")
	}
	data := data(10, 5000)
	d := digest.FromBytes(data)
	key := cachestore.BlobKey(d)
	name := spool(t, imp, data)
	t.Cleanup(func() { os.Remove(name) })
	for _, size := range []int64{int64(len(data)) - 1, int64(len(data)) + 1, 0} {
		if err := imp.ImportFile(t.Context(), key, name, size, d); err == nil {
			t.Errorf("ImportFile of %d bytes with size %d = nil, want an error", len(data), size)
		}
	}
	wantNotFound(t, s, key)
	// The caller owns a refused file and removes it itself.
	if _, err := os.Stat(name); err != nil {
		t.Errorf("refused spool file: Stat = %v, want it left in place", err)
	}
}

func testDelete(t *testing.T, s cachestore.Store) {
	del, ok := s.(cachestore.Deleter)
	if !ok {
		t.Skip("store is not a Deleter")
	}
	data := data(11, 4000)
	for _, shape := range entryShapes {
		key := shape.key(digest.FromBytes(data))
		if err := del.Delete(t.Context(), key); !errors.Is(err, cachestore.ErrNotFound) {
			t.Errorf("Delete of a missing key = %v, want ErrNotFound", err)
		}
		put(t, s, key, shape.opts, data)
		if err := del.Delete(t.Context(), key); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		wantNotFound(t, s, key)
		if err := del.Delete(t.Context(), key); !errors.Is(err, cachestore.ErrNotFound) {
			t.Errorf("second Delete = %v, want ErrNotFound", err)
		}
		// Deleting may tidy away directories; storing again must still
		// work, and a Content key deleted takes a new first commit.
		put(t, s, key, shape.opts, data)
		wantEntry(t, s, key, data, shape.opts.MediaType)
	}
	// A record that moved from typed to untyped is deleted whole.
	key := cachestore.TagKey("de1")
	put(t, s, key, cachestore.Options{Kind: cachestore.Record, MediaType: "text/plain"}, data)
	put(t, s, key, record, data)
	if err := del.Delete(t.Context(), key); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantNotFound(t, s, key)
}
