package storetest

import (
	"errors"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// RunShared runs the cases of two stores over one storage, as two proxy
// replicas sharing one Azure container are. newPair returns two such stores,
// empty, for one subtest; the subtests run in parallel. A backend that keeps
// its entries to itself (Memory) passes one store twice.
func RunShared(t *testing.T, newPair func(t *testing.T) (a, b cachestore.Store)) {
	tests := []struct {
		name string
		fn   func(t *testing.T, a, b cachestore.Store)
	}{
		{"Visibility", testSharedVisibility},
		{"ConcurrentContentCommits", testSharedConcurrentCommits},
		{"RecordOverwrite", testSharedRecordOverwrite},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a, b := newPair(t)
			tt.fn(t, a, b)
		})
	}
}

// testSharedVisibility checks that an entry one store commits (or deletes)
// is seen by the other at once, and not before.
func testSharedVisibility(t *testing.T, a, b cachestore.Store) {
	data := content(20, 70000)
	d := digest.FromBytes(data)
	key := cachestore.BlobKey(d)
	w, err := a.Create(t.Context(), key)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	defer w.Cancel()
	writeChunks(t, w, data)
	wantNotFound(t, b, key)
	if err := w.Commit(t.Context(), d); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	wantContent(t, b, key, data)
	if del, ok := a.(cachestore.Deleter); ok {
		if err := del.Delete(t.Context(), key); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		wantNotFound(t, b, key)
	}
}

// testSharedConcurrentCommits has both stores write and commit one content
// key at once, as two replicas filling one blob do: both commits succeed,
// and so does a later one, which changes nothing.
func testSharedConcurrentCommits(t *testing.T, a, b cachestore.Store) {
	data := content(21, 300<<10+7)
	d := digest.FromBytes(data)
	key := cachestore.BlobKey(d)
	stores := []cachestore.Store{a, b, a, b}
	errs := make([]error, len(stores))
	var wg sync.WaitGroup
	for i, s := range stores {
		wg.Go(func() { errs[i] = commitChunked(t, s, key, data, d) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	if err := commitChunked(t, b, key, data, d); err != nil {
		t.Errorf("commit after the others: %v", err)
	}
	wantContent(t, a, key, data)
	wantContent(t, b, key, data)
}

// commitChunked writes data to a new writer of key in 4 KiB pieces and
// commits it under d.
func commitChunked(t *testing.T, s cachestore.Store, key string, data []byte, d digest.Digest) error {
	w, err := s.Create(t.Context(), key)
	if err != nil {
		return err
	}
	defer w.Cancel()
	for p := data; len(p) > 0; p = p[min(len(p), 4096):] {
		if _, err := w.Write(p[:min(len(p), 4096)]); err != nil {
			return err
		}
	}
	return w.Commit(t.Context(), d)
}

// testSharedRecordOverwrite moves a tag record back and forth between the
// stores: each reads the other's last write.
func testSharedRecordOverwrite(t *testing.T, a, b cachestore.Store) {
	key := cachestore.TagKey("5a4ed")
	records := [][]byte{content(22, 300), content(23, 200), content(24, 400)}
	writers := []cachestore.Store{a, b, a}
	for i, rec := range records {
		put(t, writers[i], key, rec)
		wantContent(t, a, key, rec)
		wantContent(t, b, key, rec)
	}
	if _, err := a.Stat(t.Context(), cachestore.TagKey("5a4ee")); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("Stat of another record = %v, want ErrNotFound", err)
	}
}
