package cachestore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// This file holds what an evictor needs of a store (cachestore/evict): a
// list of the committed entries with their last use, a way to record a use
// so that it survives a restart, word of every commit and read, and a delete
// that cannot remove an entry a commit just put in place.

// Entry is a committed entry as Walk reports it.
type Entry struct {
	Key  string
	Size int64
	// LastUse is when the entry was last committed or touched (on disk,
	// the file's modification time).
	LastUse time.Time
}

// Walker is implemented by stores that can list their committed entries.
type Walker interface {
	// Walk calls fn for every committed entry, in no particular order,
	// until fn returns an error, which Walk then returns. Entries committed
	// or deleted while it runs may or may not be reported.
	Walk(ctx context.Context, fn func(Entry) error) error
}

// Toucher is implemented by stores that keep an entry's last use (Disk: as
// the file's modification time), so that an evictor's order survives a
// restart.
type Toucher interface {
	// Touch records t as key's last use, or returns ErrNotFound.
	Touch(ctx context.Context, key string, t time.Time) error
}

// CondDeleter is implemented by stores that delete an entry only if a
// condition still holds, checked under the same lock as commits of that key
// (Disk). An evictor uses it to never remove an entry that a commit has just
// put in place: its condition says the entry is still the one it chose.
type CondDeleter interface {
	// DeleteIf removes key's entry if cond returns true, and reports whether
	// it did; ErrNotFound if there is none. Readers that already opened the
	// entry keep reading it. cond must be quick and must not call the store.
	DeleteIf(ctx context.Context, key string, cond func() bool) (bool, error)
}

// Observer learns of a store's commits and successful opens (an evictor's
// index). Its methods run on the committing or reading goroutine, so they
// must be quick, and must not call the store.
type Observer interface {
	// Committed is called once key's entry of size bytes is visible, under
	// the lock DeleteIf takes for key.
	Committed(key string, size int64)
	// Opened is called after key's entry was opened for reading.
	Opened(key string)
}

// observerBox holds an Observer in an atomic.Pointer.
type observerBox struct{ Observer }

var (
	_ Walker      = (*Disk)(nil)
	_ Toucher     = (*Disk)(nil)
	_ CondDeleter = (*Disk)(nil)
)

// Observe makes o learn of every later commit and open of d. Call it before
// d is shared; a later call replaces o, and nil removes it.
func (d *Disk) Observe(o Observer) {
	if o == nil {
		d.obs.Store(nil)
		return
	}
	d.obs.Store(&observerBox{o})
}

// opened tells the observer, if any, that key was opened.
func (d *Disk) opened(key string) {
	if b := d.obs.Load(); b != nil {
		b.Opened(key)
	}
}

// importFile renames src into key's place under key's lock, so that DeleteIf
// of key sees the entry before the rename or after it, and tells the
// observer.
func (d *Disk) importFile(src, key string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	mu := d.keys.of(key)
	mu.Lock()
	defer mu.Unlock()
	if err := d.dv.Import(src, key, true); err != nil {
		return err
	}
	if b := d.obs.Load(); b != nil {
		b.Committed(key, fi.Size())
	}
	return nil
}

// keyLocks is a fixed set of mutexes that keys hash onto: a commit and a
// DeleteIf of one key always take the same one.
type keyLocks struct {
	once sync.Once
	seed maphash.Seed
	mu   [64]sync.Mutex
}

func (k *keyLocks) of(key string) *sync.Mutex {
	k.once.Do(func() { k.seed = maphash.MakeSeed() })
	return &k.mu[maphash.String(k.seed, key)%uint64(len(k.mu))]
}

// DeleteIf implements CondDeleter. Unlike Delete it leaves the directories
// that hold the entry in place, even when empty: a second process (regproxy
// cache gc beside a server) could otherwise remove one between another's
// mkdir and rename.
func (d *Disk) DeleteIf(_ context.Context, key string, cond func() bool) (bool, error) {
	p, err := d.path(key)
	if err != nil {
		return false, err
	}
	mu := d.keys.of(key)
	mu.Lock()
	defer mu.Unlock()
	fi, err := os.Lstat(p)
	if err == nil && !fi.Mode().IsRegular() {
		err = fs.ErrNotExist
	}
	if err != nil {
		return false, statErr("delete", key, err)
	}
	if !cond() {
		return false, nil
	}
	if err := os.Remove(p); err != nil {
		return false, statErr("delete", key, err)
	}
	return true, nil
}

// Touch implements Toucher: it sets the file's modification time, leaving
// its access time alone.
func (d *Disk) Touch(_ context.Context, key string, t time.Time) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Chtimes(p, time.Time{}, t); err != nil {
		return statErr("touch", key, err)
	}
	return nil
}

// Walk implements Walker. It reads the directories under the root, except
// the spool, and reports each file whose place matches the layout of its
// key; anything else there (a file put by hand) is skipped.
func (d *Disk) Walk(ctx context.Context, fn func(Entry) error) error {
	tops, err := os.ReadDir(d.root)
	if err != nil {
		return fmt.Errorf("cachestore: walk: %w", err)
	}
	for _, top := range tops {
		if !top.IsDir() || top.Name() == spoolName {
			continue
		}
		if err := d.walkDir(ctx, top.Name(), fn); err != nil {
			return err
		}
	}
	return nil
}

// walkDir walks rel, a directory under the root. A directory that vanishes
// while it runs (a delete pruning it) is skipped.
func (d *Disk) walkDir(ctx context.Context, rel string, fn func(Entry) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	des, err := os.ReadDir(filepath.Join(d.root, rel))
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cachestore: walk: %w", err)
	}
	for _, de := range des {
		child := rel + "/" + de.Name()
		if de.IsDir() {
			if err := d.walkDir(ctx, child, fn); err != nil {
				return err
			}
			continue
		}
		e, ok := d.entryAt(child, de)
		if !ok {
			continue
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// entryAt turns a file at rel (slash-separated, under the root) into an
// Entry: its key is rel without the fan-out directory, which must be the
// one layout gives that key.
func (d *Disk) entryAt(rel string, de fs.DirEntry) (Entry, bool) {
	if !de.Type().IsRegular() {
		return Entry{}, false
	}
	dir, name := pathSplit(rel)
	key := name
	if parent, _ := pathSplit(dir); parent != "" {
		key = parent + "/" + name
	}
	// path puts key's file at rel only if the fan-out directory is its own.
	if p, err := d.path(key); err != nil || p != filepath.Join(d.root, filepath.FromSlash(rel)) {
		return Entry{}, false
	}
	fi, err := de.Info()
	if err != nil || !fi.Mode().IsRegular() {
		return Entry{}, false // removed since the directory was read
	}
	return Entry{Key: key, Size: fi.Size(), LastUse: fi.ModTime()}, true
}

// pathSplit splits a slash-separated path at its last slash.
func pathSplit(p string) (dir, name string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

// OpenDisk opens the disk store at root as NewDisk does, but neither creates
// it nor sweeps its spool: for tools that run beside a server on the same
// root (regproxy cache), whose fills in progress live in the spool.
func OpenDisk(root string) (*Disk, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("cachestore: disk root %q: %w", root, err)
	}
	fi, err := os.Stat(abs)
	if err == nil && !fi.IsDir() {
		err = errors.New("not a directory")
	}
	if err != nil {
		return nil, fmt.Errorf("cachestore: disk root %q: %w", root, err)
	}
	return newDisk(abs, filepath.Join(abs, spoolName)), nil
}
