package storetest

import (
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// The cases of two stores over one storage, as two proxy replicas sharing
// one Azure container, or regproxy cache beside serve on one disk cache,
// are.

// testSharedVisibility checks that an entry one store commits (or deletes)
// is seen by the other at once, and not before.
func testSharedVisibility(t *testing.T, a, b cachestore.Store) {
	data := data(20, 70000)
	d := digest.FromBytes(data)
	key := cachestore.ManifestKey(d)
	w, err := a.Create(t.Context(), key, typed(manifestType))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	defer w.Cancel()
	writeChunks(t, w, data)
	wantNotFound(t, b, key)
	if err := w.Commit(t.Context(), d); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	wantEntry(t, b, key, data, manifestType)
	if del, ok := a.(cachestore.Deleter); ok {
		if err := del.Delete(t.Context(), key); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		wantNotFound(t, b, key)
	}
}

// testSharedConcurrentCommits has both stores write and commit one content
// key at once, as two replicas filling one blob do: every commit succeeds,
// and so does a later one, which changes nothing.
func testSharedConcurrentCommits(t *testing.T, a, b cachestore.Store) {
	for _, shape := range entryShapes {
		t.Run(shape.name, func(t *testing.T) {
			data := data(21, 300<<10+7)
			d := digest.FromBytes(data)
			key := shape.key(d)
			stores := []cachestore.Store{a, b, a, b}
			errs := make([]error, len(stores))
			var wg sync.WaitGroup
			for i, s := range stores {
				wg.Go(func() { errs[i] = commit(t, s, key, shape.opts, data, 4096) })
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("writer %d: %v", i, err)
				}
			}
			if err := commit(t, b, key, shape.opts, data, 4096); err != nil {
				t.Errorf("commit after the others: %v", err)
			}
			wantEntry(t, a, key, data, shape.opts.MediaType)
			wantEntry(t, b, key, data, shape.opts.MediaType)
		})
	}
}

// testSharedRecordOverwrite moves a tag record back and forth between the
// stores: each reads the other's last write.
func testSharedRecordOverwrite(t *testing.T, a, b cachestore.Store) {
	key := cachestore.TagKey("5a4ed")
	records := [][]byte{data(22, 300), data(23, 200), data(24, 400)}
	types := []string{"", "application/json", ""}
	writers := []cachestore.Store{a, b, a}
	for i, rec := range records {
		put(t, writers[i], key, cachestore.Options{Kind: cachestore.Record, MediaType: types[i]}, rec)
		wantEntry(t, a, key, rec, types[i])
		wantEntry(t, b, key, rec, types[i])
	}
	wantNotFound(t, a, cachestore.TagKey("5a4ee"))
}
