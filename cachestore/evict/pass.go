package evict

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/regproxy/regproxy/cachestore"
)

// maxBatch bounds the victims chosen at once, so that what a batch frees
// is looked at again before the next.
const maxBatch = 512

// releaseWindow is how long an evicted entry's bytes are taken to be on
// their way back to the filesystem: a client that is streaming an evicted
// blob holds its blocks until it finishes, and without this allowance the
// floor would evict more entries each time it looked.
const releaseWindow = time.Minute

// Result is what an eviction removed.
type Result struct {
	Entries int   `json:"entries"`
	Bytes   int64 `json:"bytes"`
}

// Add counts what o removed in r as well.
func (r *Result) Add(o Result) {
	r.Entries += o.Entries
	r.Bytes += o.Bytes
}

// victim is an entry chosen for eviction, as it was when chosen.
type victim struct {
	e   *entry
	gen uint64
}

// need returns how many bytes Run must evict now, and which bound asks.
// Nothing is evicted before the index is loaded.
func (ix *Index) need() (int64, string) {
	ix.mu.Lock()
	loaded, total := ix.loaded, ix.totalLocked()
	ix.mu.Unlock()
	if !loaded {
		return 0, ""
	}
	var need int64
	why := ""
	if ix.maxSize > 0 && total > ix.maxSize {
		need, why = total-ix.maxSize, "cache-max-size"
	}
	if short := ix.freeShort(); short > need {
		need, why = short, "min-free-space"
	}
	return need, why
}

// freeState is what the floor remembers between looks at free space.
type freeState struct {
	lastAvail int64 // at the last look; -1 before the first
	size      int64 // the filesystem's, at the last look
	floor     int64 // the free space wanted, at the last look
	// pending are bytes evicted within releaseWindow that the filesystem
	// has not shown as available yet, oldest first.
	pending []release
	warned  bool // FreeSpace failed, and that was logged
}

type release struct {
	at time.Time
	n  int64
}

// freeShort returns how many bytes free space is below the floor, less
// those that eviction freed and the filesystem does not show yet.
func (ix *Index) freeShort() int64 {
	if ix.freeSpace == nil {
		return 0
	}
	avail, size, err := ix.freeSpace()
	ix.mu.Lock()
	warn := err != nil && !ix.free.warned
	ix.free.warned = ix.free.warned || err != nil
	var short int64
	if err == nil {
		f := &ix.free
		f.floor = max(ix.minFree, int64(float64(size)*ix.minFreePct/100))
		short = f.floor - avail - f.seen(avail, size, ix.now())
	}
	ix.mu.Unlock()
	if warn {
		ix.log.Warn("cache: cannot read free space; --min-free-space has no effect", "err", err)
	}
	return short
}

// seen records a look at free space and returns the bytes still pending:
// space that appeared since the last look pays for the oldest first.
func (f *freeState) seen(avail, size int64, now time.Time) int64 {
	if gained := avail - f.lastAvail; f.lastAvail >= 0 && gained > 0 {
		for len(f.pending) > 0 && gained > 0 {
			k := min(gained, f.pending[0].n)
			f.pending[0].n -= k
			gained -= k
			if f.pending[0].n == 0 {
				f.pending = f.pending[1:]
			}
		}
	}
	f.lastAvail, f.size = avail, size
	f.pending = slices.DeleteFunc(f.pending, func(r release) bool { return now.Sub(r.at) > releaseWindow })
	var n int64
	for _, r := range f.pending {
		n += r.n
	}
	return n
}

// evict removes entries, in the package's order, until need asks for no
// more or nothing more can go.
func (ix *Index) evict(ctx context.Context, need func() (int64, string)) Result {
	var res Result
	why := ""
	for ctx.Err() == nil {
		n, reason := need()
		if n <= 0 {
			break
		}
		why = reason
		victims := ix.victims(ctx, n)
		if len(victims) == 0 {
			ix.warnStuck(n, why)
			break
		}
		batch := ix.removeAll(ctx, victims)
		res.Add(batch)
		if batch.Entries == 0 {
			break // each was committed again, or could not be removed: look later
		}
	}
	if res.Entries > 0 {
		ix.mu.Lock()
		total := ix.totalLocked()
		ix.stuck = false
		ix.mu.Unlock()
		ix.log.Info("cache eviction", "entries", res.Entries, "bytes", res.Bytes, "bound", why, "cache_bytes", total)
	}
	return res
}

// victims chooses what to evict next, about need bytes of it: the least
// recently used blobs, else manifests no tag record points to, else the
// tag records past their TTL.
func (ix *Index) victims(ctx context.Context, need int64) []victim {
	if v := ix.oldest(0, need, time.Time{}, nil); len(v) > 0 {
		return v
	}
	refs := ix.references(ctx)
	if v := ix.oldest(1, need, time.Time{}, refs); len(v) > 0 {
		return v
	}
	return ix.expiredTags()
}

// oldest takes entries from the front of list l until they hold need
// bytes, skipping the manifests in refs; a manifest's .meta record goes
// first. With a non-zero before, it stops at the first entry used since.
func (ix *Index) oldest(l int, need int64, before time.Time, refs map[string]bool) []victim {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	var vs []victim
	var sum int64
	for el := ix.lru[l].Front(); el != nil && sum < need && len(vs) < maxBatch; el = el.Next() {
		e := el.Value.(*entry)
		if !before.IsZero() && !e.used.Before(before) {
			break
		}
		if e.size < 0 || refs[e.key] {
			continue
		}
		if m := ix.entries[e.key+metaSuffix]; l == 1 && m != nil {
			vs = append(vs, victim{m, m.gen})
			sum += max(m.size, 0)
		}
		vs = append(vs, victim{e, e.gen})
		sum += e.size
	}
	return vs
}

// expiredTags returns the tag records past their TTL, and those that
// could not be read.
func (ix *Index) expiredTags() []victim {
	now := ix.now()
	ix.mu.Lock()
	defer ix.mu.Unlock()
	var vs []victim
	for _, e := range ix.entries {
		if e.kind == Tag && e.read != nil && e.read.gen == e.gen && e.read.expired(now, ix.ttl) {
			vs = append(vs, victim{e, e.gen})
		}
	}
	return vs
}

// expired reports whether a tag record is past its TTL at now: past the
// expiry it records, which the TTL rules in force when it was written set
// (a tag a rule keeps for 60 days is not dropped after --manifest-ttl);
// else, for a record written before TTL rules, past ttl after its
// validation. An unreadable record has neither, and is expired.
//
// The proxy goes by the rules in force now, which a restart may have
// changed: a record whose rule was shortened since is kept here until its
// old expiry, and one whose rule was lengthened may go before the proxy
// would revalidate it, which costs one more fetch of its manifest.
func (r *readInfo) expired(now time.Time, ttl time.Duration) bool {
	if !r.expires.IsZero() {
		return now.After(r.expires)
	}
	return now.After(r.validated.Add(ttl))
}

// removeAll removes the victims that have not changed since they were
// chosen.
func (ix *Index) removeAll(ctx context.Context, vs []victim) Result {
	var res Result
	for _, v := range vs {
		if n, ok := ix.remove(ctx, v); ok {
			res.Entries++
			res.Bytes += n
		}
	}
	return res
}

// remove deletes v's entry if it is still the one chosen: the store checks
// that under the lock its commits take, so that an entry committed again
// since (a fill's, a rewritten tag record) stays. A reader that has it
// open reads on: on disk an unlinked file lives until it is closed.
func (ix *Index) remove(ctx context.Context, v victim) (int64, bool) {
	key := v.e.key
	same := func() bool {
		ix.mu.Lock()
		defer ix.mu.Unlock()
		return ix.entries[key] == v.e && v.e.gen == v.gen
	}
	deleted, err := ix.store.DeleteIf(ctx, key, same)
	gone := deleted || errors.Is(err, cachestore.ErrNotFound)
	if err != nil && !gone {
		ix.log.Warn("cache: cannot evict", "key", key, "err", err)
		ix.mu.Lock()
		if ix.entries[key] == v.e && v.e.elem != nil {
			l, _ := listed(key, v.e.kind)
			ix.lru[l].MoveToBack(v.e.elem) // so that the next pass moves on
		}
		ix.mu.Unlock()
		return 0, false
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if !gone || ix.entries[key] != v.e || v.e.gen != v.gen {
		return 0, false
	}
	size := max(v.e.size, 0)
	ix.dropLocked(v.e)
	if !deleted {
		return 0, false // someone else removed it: it freed nothing now
	}
	ix.evicted.entries++
	ix.evicted.bytes += size
	if ix.freeSpace != nil {
		ix.free.pending = append(ix.free.pending, release{ix.now(), size})
	}
	return size, true
}

// warnStuck logs, once until an eviction succeeds again, that the cache
// is out of bounds with nothing left to evict: what is left are live tag
// records and the manifests they name, or the filesystem is full of other
// files.
func (ix *Index) warnStuck(over int64, bound string) {
	ix.mu.Lock()
	warned := ix.stuck
	ix.stuck = true
	ix.mu.Unlock()
	if !warned {
		ix.log.Warn("cache: out of bounds with nothing left to evict", "over_by", over, "bound", bound)
	}
}
