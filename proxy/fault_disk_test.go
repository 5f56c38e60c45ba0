package proxy_test

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/fill"
	"github.com/regproxy/regproxy/proxy"
)

// fullDisk is the proxy's disk store with a disk that fills up: its fills'
// spool files share free bytes, and a write that crosses the limit writes
// the part that fits, as write(2) does, then fails with ENOSPC. Commits
// are renames, which take no space.
type fullDisk struct {
	*cachestore.Disk
	free atomic.Int64
}

func (s *fullDisk) CreateSpool(dir string) (fill.SpoolFile, error) {
	f, err := os.CreateTemp(dir, "fill-*")
	if err != nil {
		return nil, err
	}
	return &fullFile{File: f, disk: s}, nil
}

type fullFile struct {
	*os.File
	disk *fullDisk
}

// fit takes room for p from the disk, and returns the part of p that fits
// and, if that is not all of it, ENOSPC.
func (f *fullFile) fit(p []byte) ([]byte, error) {
	for {
		left := f.disk.free.Load()
		k := min(int64(len(p)), max(left, 0))
		if !f.disk.free.CompareAndSwap(left, left-k) {
			continue
		}
		if k < int64(len(p)) {
			return p[:k], &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
		}
		return p, nil
	}
}

func (f *fullFile) WriteAt(p []byte, off int64) (int, error) {
	part, err := f.fit(p)
	n, werr := f.File.WriteAt(part, off)
	if werr != nil {
		return n, werr
	}
	return n, err
}

// Write moves the file offset by the part written, as write(2) does.
func (f *fullFile) Write(p []byte) (int, error) {
	part, err := f.fit(p)
	n, werr := f.File.Write(part)
	if werr != nil {
		return n, werr
	}
	return n, err
}

// newFullDiskEnv is an env whose store is a fullDisk with room to spare.
func newFullDiskEnv(t *testing.T) (*env, *fullDisk, *syncBuffer) {
	t.Helper()
	e := newEnv(t)
	e.stop()
	disk := &fullDisk{}
	disk.free.Store(1 << 40)
	log := &syncBuffer{}
	e.logTo = log
	e.configure = func(cfg *proxy.Config) {
		disk.Disk = cfg.Store.(*cachestore.Disk)
		cfg.Store = disk
	}
	e.start()
	return e, disk, log
}

// TestDiskFullDuringFill is issue 9, item 1: when the disk fills up during
// a fill, its clients still get the blob, relayed; nothing is committed and
// nothing is fetched again (a local write failure is no upstream cut); the
// log names the cause. Hits are still served, new misses are relayed, and
// once there is room again the blob is cached, without a restart.
func TestDiskFullDuringFill(t *testing.T) {
	t.Parallel()
	e, disk, log := newFullDiskEnv(t)
	hit, hitBytes := oneLayer(t, e, 50<<10)
	c := e.client()
	if got, err := fetchBlob(e, c, hit); err != nil || !bytes.Equal(got, hitBytes) {
		t.Fatalf("first blob: %d bytes, %v", len(got), err)
	}
	d, want := oneLayer(t, e, 1<<20)
	path := "/v2/r/blobs/" + d.String()
	disk.free.Store(100_001) // the disk fills up part of the way into the next fill
	e.up.ResetCounts()
	e.up.SetFault(slowBlob(want, 20, 10*time.Millisecond))
	leader := startSlowFill(t, e, path)
	resp, joined := e.get(c, "GET", path)
	led, err := io.ReadAll(leader.Body)
	for i, got := range [][]byte{led, joined} {
		if !bytes.Equal(got, want) {
			t.Fatalf("client %d got %d bytes (%v); want the blob byte for byte", i, len(got), err)
		}
	}
	if resp.StatusCode != http.StatusOK || e.up.Count("GET blob") != 1 {
		t.Fatalf("joined client: status %d; upstream blob GETs %d; want 200 and 1", resp.StatusCode, e.up.Count("GET blob"))
	}
	if !strings.Contains(log.String(), "no space left on device") {
		t.Error("the log does not name the full disk")
	}
	e.up.SetFault(nil)
	waitNoSpoolFiles(t, e)

	// Hits are served; a new miss is relayed, not cut.
	assertCachedOnce(t, e, c, hit, hitBytes)
	if got, err := fetchBlob(e, c, d); err != nil || !bytes.Equal(got, want) || e.up.Count("GET blob") != 1 {
		t.Fatalf("miss on a full disk: %d bytes, %v, %d upstream GETs; want the blob relayed", len(got), err, e.up.Count("GET blob"))
	}
	// Room again: the next miss is cached.
	disk.free.Store(1 << 40)
	if got, err := fetchBlob(e, c, d); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("miss with room again: %d bytes, %v", len(got), err)
	}
	assertCachedOnce(t, e, c, d, want)
}

// waitNoSpoolFiles waits until the fills have let go of their spool files.
func waitNoSpoolFiles(t *testing.T, e *env) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		entries, _ := os.ReadDir(e.dataDir + "/cache/tmp")
		if len(entries) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spool files left after a relayed fill: %v", entries)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
