package azure

import (
	"context"
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// TestWalk lists every committed entry of the container with its size and
// a last use no older than its commit; a blob whose name is no key is left
// out, and an uncommitted writer's blocks are not an entry.
func TestWalk(t *testing.T) {
	t.Parallel()
	s := newStore(t, testConfig(t))
	before := time.Now().Add(-time.Minute) // Azurite's clock may differ a little
	want := map[string]int64{}
	for i, n := range []int{0, 10, 70000, 200 << 10} {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(i + j)
		}
		key := cachestore.BlobKey(digest.FromBytes(b))
		put(t, s, key, b)
		want[key] = int64(n)
	}
	putOpts(t, s, cachestore.TagKey("00ff"), record, []byte(`{"tag":"v1"}`))
	want[cachestore.TagKey("00ff")] = int64(len(`{"tag":"v1"}`))
	// Not a key: the walk skips it.
	if _, err := s.c.NewBlockBlobClient("Not_A_Key").UploadBuffer(t.Context(), []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	w, err := s.Create(t.Context(), cachestore.BlobKey(digest.FromString("pending")), content)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	w.Write(make([]byte, 100<<10)) // stages blocks, never committed

	got := map[string]int64{}
	err = s.Walk(t.Context(), func(e cachestore.Entry) error {
		if _, dup := got[e.Key]; dup {
			t.Errorf("Walk reported %s twice", e.Key)
		}
		got[e.Key] = e.Size
		if e.LastUse.Before(before) || e.LastUse.After(time.Now().Add(time.Minute)) {
			t.Errorf("%s: LastUse %v, want about now", e.Key, e.LastUse)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	if !maps.Equal(got, want) {
		t.Errorf("Walk found %v\nwant %v", got, want)
	}

	stop := errors.New("stop")
	n := 0
	if err := s.Walk(t.Context(), func(cachestore.Entry) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("Walk with fn failing: %v after %d calls; want fn's error after 1", err, n)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Walk(ctx, func(cachestore.Entry) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Walk with a canceled context: %v", err)
	}
}

// TestDeleteIf deletes an entry whose condition holds, keeps one whose
// condition fails, and keeps a record that another replica committed
// again between the check and the delete (its ETag changed).
func TestDeleteIf(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s, other := newStore(t, cfg), newStore(t, cfg)
	data := []byte("a blob")
	key := cachestore.BlobKey(digest.FromBytes(data))
	put(t, s, key, data)

	if ok, err := s.DeleteIf(t.Context(), key, func() bool { return false }); ok || err != nil {
		t.Errorf("DeleteIf with a false condition = %v, %v; want false, nil", ok, err)
	}
	wantData(t, s, key, data)
	if ok, err := s.DeleteIf(t.Context(), key, func() bool { return true }); !ok || err != nil {
		t.Errorf("DeleteIf = %v, %v; want true, nil", ok, err)
	}
	if _, err := s.Stat(t.Context(), key); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("Stat after DeleteIf: %v, want ErrNotFound", err)
	}
	if ok, err := s.DeleteIf(t.Context(), key, func() bool { return true }); ok || !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("DeleteIf of a missing entry = %v, %v; want false, ErrNotFound", ok, err)
	}
	if _, err := s.DeleteIf(t.Context(), "../x", func() bool { return true }); !errors.Is(err, cachestore.ErrInvalidKey) {
		t.Errorf("DeleteIf of a bad key: %v, want ErrInvalidKey", err)
	}

	tag := cachestore.TagKey("abcd")
	putOpts(t, s, tag, record, []byte(`{"v":1}`))
	ok, err := s.DeleteIf(t.Context(), tag, func() bool {
		putOpts(t, other, tag, record, []byte(`{"v":2}`)) // another replica, meanwhile
		return true
	})
	if ok || err != nil {
		t.Errorf("DeleteIf of a record replaced meanwhile = %v, %v; want false, nil", ok, err)
	}
	wantData(t, s, tag, []byte(`{"v":2}`))
}
