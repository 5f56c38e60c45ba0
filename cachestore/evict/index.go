package evict

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// Kind is what an entry holds, as its key says.
type Kind int

const (
	Blob     Kind = iota // blobs/…
	Manifest             // manifests/…, with the .meta records of earlier releases
	Tag                  // tags/…
	Other                // anything else: counted, never evicted
	numKinds
)

func (k Kind) String() string {
	switch k {
	case Blob:
		return "blobs"
	case Manifest:
		return "manifests"
	case Tag:
		return "tags"
	}
	return "other"
}

const metaSuffix = ".meta"

// kindOf tells an entry's kind from its key (see cachestore.BlobKey and
// the others).
func kindOf(key string) Kind {
	top, _, _ := strings.Cut(key, "/")
	switch top {
	case "blobs":
		return Blob
	case "manifests":
		return Manifest
	case "tags":
		return Tag
	}
	return Other
}

// entry is one committed entry of the store. Its fields are guarded by the
// Index's mu.
type entry struct {
	key  string
	kind Kind
	size int64 // -1 until known: opened before the walk reported it
	// used is the last use; saved the last use the store has (the file's
	// modification time), which Touch moves at most every touchEvery.
	used, saved time.Time
	// gen counts the commits of key seen: a delete goes ahead only if it
	// has not moved since the victim was chosen.
	gen  uint64
	elem *list.Element // in lru for blobs and manifest bodies, else nil
	read *readInfo     // what the index read of a tag record or manifest; nil until read
}

// readInfo is what the index read of a tag record (see references), or of
// a manifest body: once, since bodies never change.
type readInfo struct {
	gen       uint64          // the tag record's gen when read
	ref       digest.Digest   // the manifest the tag record names; "" if unreadable
	validated time.Time       // when upstream last confirmed the tag
	expires   time.Time       // the record's own expiry; zero if it has none
	children  []digest.Digest // the manifests an index names
}

// listed reports whether entries of key's kind live in an LRU list, and
// which: blobs, and manifest bodies (a .meta record goes with its body).
func listed(key string, k Kind) (int, bool) {
	switch {
	case k == Blob:
		return 0, true
	case k == Manifest && !strings.HasSuffix(key, metaSuffix):
		return 1, true
	}
	return 0, false
}

// addLocked indexes a new entry at the back of its list (most recently
// used). mu must be held.
func (ix *Index) addLocked(key string, size int64, used time.Time) *entry {
	e := &entry{key: key, kind: kindOf(key), size: size, used: used, saved: used}
	ix.entries[key] = e
	if l, ok := listed(key, e.kind); ok {
		e.elem = ix.lru[l].PushBack(e)
	}
	ix.count[e.kind]++
	if size >= 0 {
		ix.bytes[e.kind] += size
	} else {
		ix.unsized = append(ix.unsized, e)
	}
	return e
}

// dropLocked forgets e. mu must be held.
func (ix *Index) dropLocked(e *entry) {
	delete(ix.entries, e.key)
	if e.elem != nil {
		l, _ := listed(e.key, e.kind)
		ix.lru[l].Remove(e.elem)
		e.elem = nil
	}
	ix.count[e.kind]--
	ix.bytes[e.kind] -= max(e.size, 0)
	delete(ix.dirty, e.key)
}

// setSizeLocked records e's size. mu must be held.
func (ix *Index) setSizeLocked(e *entry, size int64) {
	ix.bytes[e.kind] += size - max(e.size, 0)
	e.size = size
}

// usedLocked moves e to the back of its list, and marks its last use to be
// written if the store's copy is older than touchEvery. mu must be held.
func (ix *Index) usedLocked(e *entry, now time.Time) {
	e.used = now
	if e.elem != nil {
		l, _ := listed(e.key, e.kind)
		ix.lru[l].MoveToBack(e.elem)
	}
	if now.Sub(e.saved) >= ix.touchEvery {
		e.saved = now
		ix.dirty[e.key] = now
	}
}

// Committed implements cachestore.Observer: the entry is new, or replaced,
// and used now.
func (ix *Index) Committed(key string, size int64) {
	now := ix.now()
	ix.mu.Lock()
	e := ix.entries[key]
	if e == nil {
		e = ix.addLocked(key, size, now)
	} else {
		ix.setSizeLocked(e, size)
		ix.usedLocked(e, now)
	}
	e.gen++
	e.saved = now // the file was written now: its time is the commit's
	delete(ix.dirty, key)
	ix.mu.Unlock()
	ix.poke()
}

// Opened implements cachestore.Observer. Reads of tag records are not
// uses (they expire by TTL), nor are a manifest's .meta reads (it goes
// with its body), nor the index's own reads.
func (ix *Index) Opened(key string) {
	if _, ok := listed(key, kindOf(key)); !ok {
		return
	}
	now := ix.now()
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.reading[key] > 0 {
		return
	}
	e := ix.entries[key]
	if e == nil {
		// Committed before the walk reached it, or by another process:
		// its size is looked up later.
		e = ix.addLocked(key, -1, now)
	}
	ix.usedLocked(e, now)
}

// Load builds the index from the store: it walks every entry, then merges
// what it found with what commits and reads taught it meanwhile. Until it
// returns, nothing is evicted. Run calls it; call it only without Run.
func (ix *Index) Load(ctx context.Context) error {
	start := time.Now()
	var found []cachestore.Entry
	err := ix.store.Walk(ctx, func(e cachestore.Entry) error {
		found = append(found, e)
		return nil
	})
	if err != nil {
		return fmt.Errorf("evict: load the index: %w", err)
	}
	slices.SortFunc(found, func(a, b cachestore.Entry) int { return a.LastUse.Compare(b.LastUse) })
	// Oldest first means pushed to the front newest first. The lock is let
	// go between batches, so that reads are not held up for long.
	const batch = 4096
	for hi := len(found); hi > 0; hi -= batch {
		ix.mergeOlder(found[max(0, hi-batch):hi])
	}
	ix.mu.Lock()
	ix.loaded = true
	n, total := len(ix.entries), ix.totalLocked()
	ix.mu.Unlock()
	ix.log.Info("cache index loaded", "entries", n, "bytes", total, "duration", time.Since(start).Round(time.Millisecond).String())
	ix.poke()
	return nil
}

// mergeOlder puts walked entries, sorted by last use, in front of every
// entry indexed so far, which are newer: a commit or read since the walk
// began. An entry indexed meanwhile keeps its place, but learns its size
// if a read indexed it.
func (ix *Index) mergeOlder(found []cachestore.Entry) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, f := range slices.Backward(found) {
		if e := ix.entries[f.Key]; e != nil {
			if e.size < 0 {
				ix.setSizeLocked(e, f.Size)
			}
			continue
		}
		e := ix.addLocked(f.Key, f.Size, f.LastUse)
		if e.elem != nil {
			l, _ := listed(e.key, e.kind)
			ix.lru[l].MoveToFront(e.elem)
		}
	}
}

// resync walks the store again and reconciles the index with it, for what
// other processes did: entries they removed (regproxy cache gc, an admin
// with rm) are forgotten, and entries they added are indexed, as the least
// recently used. An entry committed here while the walk ran is kept.
func (ix *Index) resync(ctx context.Context) error {
	ix.mu.Lock()
	gens := make(map[string]uint64, len(ix.entries))
	for key, e := range ix.entries {
		gens[key] = e.gen
	}
	ix.mu.Unlock()
	var added []cachestore.Entry
	err := ix.store.Walk(ctx, func(e cachestore.Entry) error {
		if _, ok := gens[e.Key]; ok {
			delete(gens, e.Key)
		} else {
			added = append(added, e)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("evict: resync the index: %w", err)
	}
	ix.mu.Lock()
	var gone int
	for key, gen := range gens { // indexed, and not found by the walk
		if e := ix.entries[key]; e != nil && e.gen == gen && e.size >= 0 {
			ix.dropLocked(e)
			gone++
		}
	}
	ix.mu.Unlock()
	slices.SortFunc(added, func(a, b cachestore.Entry) int { return a.LastUse.Compare(b.LastUse) })
	ix.mergeOlder(added)
	if gone > 0 || len(added) > 0 {
		ix.log.Info("cache index resynced with the store", "gone", gone, "added", len(added))
	}
	return nil
}

// sizeUnsized looks up the size of entries that reads indexed and the walk
// did not report, and forgets those that are gone.
func (ix *Index) sizeUnsized(ctx context.Context) {
	ix.mu.Lock()
	if !ix.loaded || len(ix.unsized) == 0 {
		ix.mu.Unlock()
		return
	}
	todo := ix.unsized
	ix.unsized = nil
	ix.mu.Unlock()
	for _, e := range todo {
		info, err := ix.store.Stat(ctx, e.key)
		ix.mu.Lock()
		switch {
		case ix.entries[e.key] != e || e.size >= 0:
		case err == nil:
			ix.setSizeLocked(e, info.Size)
		case errors.Is(err, cachestore.ErrNotFound):
			ix.dropLocked(e)
		default:
			ix.unsized = append(ix.unsized, e) // try again later
		}
		ix.mu.Unlock()
	}
}

// flush writes the last uses that reads moved.
func (ix *Index) flush(ctx context.Context) {
	ix.mu.Lock()
	dirty := ix.dirty
	if len(dirty) == 0 {
		ix.mu.Unlock()
		return
	}
	ix.dirty = make(map[string]time.Time)
	ix.mu.Unlock()
	var failed int
	var last error
	for key, t := range dirty {
		if err := ix.store.Touch(ctx, key, t); err != nil && !errors.Is(err, cachestore.ErrNotFound) {
			failed, last = failed+1, err
		}
	}
	if failed > 0 {
		ix.log.Warn("cache: cannot record last use", "entries", failed, "err", last)
	}
}

// totalLocked is the bytes of every entry indexed. mu must be held.
func (ix *Index) totalLocked() int64 {
	var n int64
	for _, b := range ix.bytes {
		n += b
	}
	return n
}
