package storetest_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/storetest"
)

// The backends run Run in their own packages; RunShared needs two stores
// over one storage, which these tests make.

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestDiskShared(t *testing.T) {
	t.Parallel()
	storetest.RunShared(t, func(t *testing.T) (cachestore.Store, cachestore.Store) {
		// The second NewDisk sweeps the spool, which is still empty.
		root := t.TempDir()
		return newDisk(t, root), newDisk(t, root)
	})
}

func TestMemoryShared(t *testing.T) {
	t.Parallel()
	storetest.RunShared(t, func(*testing.T) (cachestore.Store, cachestore.Store) {
		m := cachestore.NewMemory()
		return m, m
	})
}

func newDisk(t *testing.T, root string) *cachestore.Disk {
	t.Helper()
	d, err := cachestore.NewDisk(root)
	if err != nil {
		t.Fatalf("NewDisk(%q): %v", root, err)
	}
	return d
}
