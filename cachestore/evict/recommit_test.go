package evict

import (
	"bytes"
	"context"
	"log/slog"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// TestRecommittedVictimStays covers the race of an eviction with a commit
// of the entry it chose: a fill's, or a tag record rewritten. The entry
// committed after the choice must stay.
func TestRecommittedVictimStays(t *testing.T) {
	t.Parallel()
	s, err := cachestore.NewDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ix := New(s, Config{MaxSize: 1, Logger: slog.New(slog.DiscardHandler)})
	if err := ix.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("x"), 100)
	key := cachestore.BlobKey(digest.FromBytes(data))
	commit(t, s, key, data)
	vs := ix.victims(t.Context(), 1)
	if len(vs) != 1 || vs[0].e.key != key {
		t.Fatalf("victims = %v, want the one blob", vs)
	}
	commit(t, s, key, data) // a fill commits it again before the delete
	if res := ix.removeAll(t.Context(), vs); res.Entries != 0 {
		t.Errorf("removeAll removed %d entries, want 0", res.Entries)
	}
	if _, err := s.Stat(t.Context(), key); err != nil {
		t.Errorf("the entry committed after it was chosen: %v, want it kept", err)
	}
	if st := ix.Stats(); st.Blobs.Entries != 1 || st.Blobs.Bytes != 100 {
		t.Errorf("index: %+v, want the blob still counted", st.Blobs)
	}
}

func commit(t *testing.T, s cachestore.Store, key string, data []byte) {
	t.Helper()
	w, err := s.Create(context.Background(), key, cachestore.Options{Kind: cachestore.Content})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	w.Write(data)
	if err := w.Commit(context.Background(), digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
}
