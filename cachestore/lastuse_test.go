package cachestore_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

func TestDiskWalk(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	d := newDisk(t, root)
	keys := []string{
		cachestore.BlobKey(digest.FromString("a")),
		cachestore.ManifestKey(digest.FromString("b")),
		cachestore.ManifestMetaKey(digest.FromString("b")),
		cachestore.TagKey("0123"),
		"x",
	}
	for i, k := range keys {
		mustPut(t, d, k, make([]byte, i+1))
	}
	// Neither the spool nor files outside the layout are entries.
	os.WriteFile(filepath.Join(d.SpoolDir(), "fill-1"), []byte("partial"), 0o644)
	os.WriteFile(filepath.Join(root, "blobs", "stray"), []byte("?"), 0o644)
	os.WriteFile(filepath.Join(root, "tags", "01", "9999"), []byte("misplaced"), 0o644)

	var got []string
	err := d.Walk(t.Context(), func(e cachestore.Entry) error {
		got = append(got, e.Key)
		want := int64(slices.Index(keys, e.Key) + 1)
		if e.Size != want || time.Since(e.LastUse) > time.Minute {
			t.Errorf("%s: size %d, last use %v; want %d and about now", e.Key, e.Size, e.LastUse, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	slices.Sort(keys)
	if !slices.Equal(got, keys) {
		t.Errorf("Walk reported %q, want %q", got, keys)
	}
	stop := errors.New("stop")
	if err := d.Walk(t.Context(), func(cachestore.Entry) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("Walk with fn failing = %v, want fn's error", err)
	}
}

func TestDiskTouch(t *testing.T) {
	t.Parallel()
	d := newDisk(t, t.TempDir())
	key := cachestore.BlobKey(digest.FromString("a"))
	if err := d.Touch(t.Context(), key, time.Now()); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("Touch of a missing key = %v, want ErrNotFound", err)
	}
	mustPut(t, d, key, []byte("a"))
	when := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := d.Touch(t.Context(), key, when); err != nil {
		t.Fatal(err)
	}
	info, err := d.Stat(t.Context(), key)
	if err != nil || !info.LastUse.Equal(when) {
		t.Errorf("after Touch: %v, %v; want last use %v", info.LastUse, err, when)
	}
}

func TestDiskDeleteIf(t *testing.T) {
	t.Parallel()
	d := newDisk(t, t.TempDir())
	key := cachestore.BlobKey(digest.FromString("a"))
	yes := func() bool { return true }
	if _, err := d.DeleteIf(t.Context(), key, yes); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("DeleteIf of a missing key = %v, want ErrNotFound", err)
	}
	mustPut(t, d, key, []byte("a"))
	r, err := d.Open(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if ok, err := d.DeleteIf(t.Context(), key, func() bool { return false }); ok || err != nil {
		t.Errorf("DeleteIf with a false condition = %v, %v; want false, nil", ok, err)
	}
	if ok, err := d.DeleteIf(t.Context(), key, yes); !ok || err != nil {
		t.Errorf("DeleteIf = %v, %v; want true, nil", ok, err)
	}
	if _, err := d.Stat(t.Context(), key); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("Stat after DeleteIf = %v, want ErrNotFound", err)
	}
	// A reader that had it open reads on.
	if b := make([]byte, 1); r.Size() != 1 {
		t.Errorf("open reader: Size %d, want 1", r.Size())
	} else if _, err := r.ReadAt(b, 0); err != nil || b[0] != 'a' {
		t.Errorf("open reader after DeleteIf: %q, %v", b, err)
	}
	if _, err := d.DeleteIf(t.Context(), "../x", yes); !errors.Is(err, cachestore.ErrInvalidKey) {
		t.Errorf("DeleteIf(../x) = %v, want ErrInvalidKey", err)
	}
}

// observer records what a Disk tells it.
type observer struct {
	mu        sync.Mutex
	committed []string
	opened    []string
}

func (o *observer) Committed(key string, size int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.committed = append(o.committed, key)
}

func (o *observer) Opened(key string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.opened = append(o.opened, key)
}

func TestDiskObserve(t *testing.T) {
	t.Parallel()
	d := newDisk(t, t.TempDir())
	o := &observer{}
	d.Observe(o)
	a := cachestore.BlobKey(digest.FromString("a"))
	b := cachestore.BlobKey(digest.FromString("b"))
	mustPut(t, d, a, []byte("a"))
	name := filepath.Join(d.SpoolDir(), "fill-b")
	os.WriteFile(name, []byte("b"), 0o644)
	if err := d.ImportFile(t.Context(), b, name, 1, digest.FromString("b")); err != nil {
		t.Fatal(err)
	}
	r, err := d.Open(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	d.Open(t.Context(), cachestore.BlobKey(digest.FromString("missing")))
	if want := []string{a, b}; !slices.Equal(o.committed, want) {
		t.Errorf("committed %q, want %q", o.committed, want)
	}
	if want := []string{a}; !slices.Equal(o.opened, want) {
		t.Errorf("opened %q, want %q", o.opened, want)
	}
}

func TestOpenDiskLeavesTheSpool(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	d := newDisk(t, root)
	key := cachestore.BlobKey(digest.FromString("a"))
	mustPut(t, d, key, []byte("a"))
	partial := filepath.Join(d.SpoolDir(), "fill-1")
	os.WriteFile(partial, []byte("a fill in progress"), 0o644)
	d2, err := cachestore.OpenDisk(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(partial); err != nil {
		t.Errorf("a second process's OpenDisk removed the first one's spool file: %v", err)
	}
	if _, err := d2.Stat(t.Context(), key); err != nil {
		t.Errorf("OpenDisk: Stat = %v", err)
	}
	if _, err := cachestore.OpenDisk(filepath.Join(root, "none")); err == nil {
		t.Error("OpenDisk of a missing root succeeded")
	}
}

func TestDiskFreeSpace(t *testing.T) {
	t.Parallel()
	d := newDisk(t, t.TempDir())
	avail, size, err := d.FreeSpace()
	if err != nil || avail <= 0 || size < avail {
		t.Errorf("FreeSpace = %d, %d, %v; want 0 < avail <= size", avail, size, err)
	}
}
