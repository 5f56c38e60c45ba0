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
// list of the committed entries with their last use, the size of one, a way
// to record a use so that it survives a restart, word of every commit and
// read, and a delete that cannot remove an entry a commit just put in place.

// Entry is a committed entry as Walk and Stat report it.
type Entry struct {
	Key string
	// Size is the bytes the entry takes in the store: on disk, those of
	// its file, media type line included.
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

// Stater is implemented by stores that can report an entry without opening
// it: an evictor sizes so the entries it learned of from a read.
type Stater interface {
	// Stat reports key's entry, or returns ErrNotFound.
	Stat(ctx context.Context, key string) (Entry, error)
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
	_ Stater      = (*Disk)(nil)
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

// commitFile renames src into key's place (its typed file if typed) under
// key's lock, so that DeleteIf of key sees the entry before the rename or
// after it, and tells the observer. It reports whether it installed src:
//   - a Content entry that key already has stays, and src is removed
//     instead (a second process on the root may race this check; both
//     then install the same bytes);
//   - a Record replaces both of key's files: the new one is renamed into
//     place, then the other removed. Open looks at the untyped file first,
//     so a reader finds the old entry or the new one, and a crash between
//     the two steps leaves the old entry, as if the commit had not
//     happened, or the new one.
//
// Either way the observer hears of a commit: a Content entry committed
// again is in use.
func (d *Disk) commitFile(src, key string, kind Kind, typed bool) (bool, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return false, err
	}
	p, _ := d.path(key) // commitFile's callers checked the key
	mu := d.keys.of(key)
	mu.Lock()
	defer mu.Unlock()
	if kind == Content {
		if e, err := d.stat(key, p); err == nil {
			if err := os.Remove(src); err != nil {
				return false, err
			}
			d.committed(key, e.Size)
			return false, nil
		}
	}
	name, other := key, p+typedSuffix
	if typed {
		name, other = key+typedSuffix, p
	}
	if err := d.dv.Import(src, name, true); err != nil {
		return false, err
	}
	if kind == Record {
		if _, err := regularFile(other); err == nil {
			if err := os.Remove(other); err != nil {
				return false, err
			}
		}
	}
	d.committed(key, fi.Size())
	return true, nil
}

// committed tells the observer, if any, of a commit of key.
func (d *Disk) committed(key string, size int64) {
	if b := d.obs.Load(); b != nil {
		b.Committed(key, size)
	}
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

// files returns the files that exist of the entry whose untyped file is p:
// that one, its typed one, or (after a crash mid-commit of a Record) both.
func (d *Disk) files(p string) ([]string, error) {
	var found []string
	for _, f := range [...]string{p, p + typedSuffix} {
		_, err := regularFile(f)
		switch {
		case err == nil:
			found = append(found, f)
		case !isNotFound(err):
			return nil, err
		}
	}
	if len(found) == 0 {
		return nil, fs.ErrNotExist
	}
	return found, nil
}

// Stat implements Stater, for the file Open would read. Local metadata
// calls are short, so ctx is not consulted.
func (d *Disk) Stat(_ context.Context, key string) (Entry, error) {
	p, err := d.path(key)
	if err != nil {
		return Entry{}, err
	}
	e, err := d.stat(key, p)
	if err != nil {
		return Entry{}, statErr("stat", key, err)
	}
	return e, nil
}

// stat is Stat of a checked key whose untyped file is at p.
func (d *Disk) stat(key, p string) (Entry, error) {
	files, err := d.files(p)
	if err != nil {
		return Entry{}, err
	}
	fi, err := regularFile(files[0])
	if err != nil {
		return Entry{}, err
	}
	return Entry{Key: key, Size: fi.Size(), LastUse: fi.ModTime()}, nil
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
	files, err := d.files(p)
	if err != nil {
		return false, statErr("delete", key, err)
	}
	if !cond() {
		return false, nil
	}
	for _, f := range files {
		if err := os.Remove(f); err != nil && !isNotFound(err) {
			return false, statErr("delete", key, err)
		}
	}
	return true, nil
}

// Touch implements Toucher: it sets the modification time of the entry's
// file, leaving its access time alone.
func (d *Disk) Touch(_ context.Context, key string, t time.Time) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	files, err := d.files(p)
	if err != nil {
		return statErr("touch", key, err)
	}
	for _, f := range files {
		if err := os.Chtimes(f, time.Time{}, t); err != nil {
			return statErr("touch", key, err)
		}
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
// one layout gives that key, and without typedSuffix. An entry in both of
// its files (after a crash mid-commit) is reported twice.
func (d *Disk) entryAt(rel string, de fs.DirEntry) (Entry, bool) {
	if !de.Type().IsRegular() {
		return Entry{}, false
	}
	dir, name := pathSplit(rel)
	name, typed := strings.CutSuffix(name, typedSuffix)
	key := name
	if parent, _ := pathSplit(dir); parent != "" {
		key = parent + "/" + name
	}
	// path puts key's file at rel only if the fan-out directory is its own.
	p, err := d.path(key)
	if typed {
		p += typedSuffix
	}
	if err != nil || p != filepath.Join(d.root, filepath.FromSlash(rel)) {
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
