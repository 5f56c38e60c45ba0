package evict

import (
	"context"
	"time"
)

// KindStats counts the entries of one kind.
type KindStats struct {
	Entries int   `json:"entries"`
	Bytes   int64 `json:"bytes"`
}

// Stats describes the cache as the index sees it.
type Stats struct {
	// Loaded is false until the walk of the store at start is merged in:
	// until then the figures count only what was committed or read since.
	Loaded    bool      `json:"loaded"`
	Blobs     KindStats `json:"blobs"`
	Manifests KindStats `json:"manifests"` // with the .meta records of earlier releases
	Tags      KindStats `json:"tags"`
	Other     KindStats `json:"other"`
	Entries   int       `json:"entries"`
	Bytes     int64     `json:"bytes"`
	// OldestUse and NewestUse are the last uses of the least and the most
	// recently used blob or manifest; zero when there is none.
	OldestUse time.Time `json:"oldestUse"`
	NewestUse time.Time `json:"newestUse"`
	// MaxSize is the cap (0: none).
	MaxSize int64 `json:"maxSize"`
	// FreeFloor, Free and FilesystemSize are the free space wanted, found
	// and the filesystem's size at the last look; -1 when there is no
	// floor or no look yet.
	FreeFloor      int64 `json:"freeFloor"`
	Free           int64 `json:"free"`
	FilesystemSize int64 `json:"filesystemSize"`
	// Evicted counts what this Index evicted since it was made.
	Evicted KindStats `json:"evicted"`
}

// Stats returns the index's figures. It is cheap enough for every scrape.
func (ix *Index) Stats() Stats {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	s := Stats{Loaded: ix.loaded, MaxSize: ix.maxSize, FreeFloor: -1, Free: -1, FilesystemSize: -1}
	kinds := [...]*KindStats{Blob: &s.Blobs, Manifest: &s.Manifests, Tag: &s.Tags, Other: &s.Other}
	for k, ks := range kinds {
		ks.Entries, ks.Bytes = ix.count[k], ix.bytes[k]
		s.Entries += ks.Entries
		s.Bytes += ks.Bytes
	}
	for _, l := range ix.lru {
		if f := l.Front(); f != nil && (s.OldestUse.IsZero() || f.Value.(*entry).used.Before(s.OldestUse)) {
			s.OldestUse = f.Value.(*entry).used
		}
		if b := l.Back(); b != nil && b.Value.(*entry).used.After(s.NewestUse) {
			s.NewestUse = b.Value.(*entry).used
		}
	}
	if ix.freeSpace != nil && ix.free.lastAvail >= 0 {
		s.FreeFloor, s.Free, s.FilesystemSize = ix.free.floor, ix.free.lastAvail, ix.free.size
	}
	s.Evicted = KindStats{Entries: int(ix.evicted.entries), Bytes: ix.evicted.bytes}
	return s
}

// Trim evicts, in Run's order, until the cache holds at most size bytes,
// now (regproxy cache gc --max-size). Call Load first.
func (ix *Index) Trim(ctx context.Context, size int64) Result {
	return ix.evict(ctx, func() (int64, string) {
		ix.mu.Lock()
		defer ix.mu.Unlock()
		return ix.totalLocked() - size, "max-size"
	})
}

// EvictUnusedSince evicts the blobs and manifests last used before t, and
// the tag records last written (validated) before t, now (regproxy cache
// gc --older-than). A manifest that a tag record kept stays. Call Load
// first.
func (ix *Index) EvictUnusedSince(ctx context.Context, t time.Time) Result {
	var res Result
	res.Add(ix.removeUnusedSince(ctx, 0, t, nil))
	ix.readTags(ctx)
	res.Add(ix.removeAll(ctx, ix.unusedTags(t)))
	res.Add(ix.removeUnusedSince(ctx, 1, t, ix.references(ctx)))
	return res
}

// removeUnusedSince removes the entries of LRU list l (0: blobs, 1:
// manifest bodies, skipping those in refs) last used before t, oldest
// first, until none is left or a round removes nothing.
func (ix *Index) removeUnusedSince(ctx context.Context, l int, t time.Time, refs map[string]bool) Result {
	const all = int64(1) << 62
	var res Result
	for ctx.Err() == nil {
		vs := ix.oldest(l, all, t, refs)
		if len(vs) == 0 {
			break
		}
		r := ix.removeAll(ctx, vs)
		if r.Entries == 0 {
			break
		}
		res.Add(r)
	}
	return res
}

// unusedTags returns the tag records last written before t.
func (ix *Index) unusedTags(t time.Time) []victim {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	var vs []victim
	for _, e := range ix.entries {
		if e.kind == Tag && e.used.Before(t) {
			vs = append(vs, victim{e, e.gen})
		}
	}
	return vs
}
