// Package evict keeps a disk cache within bounds: under a size cap, and
// with a floor of free space on its filesystem. It owns an in-memory index
// of the store's entries by last use, which it builds from the store at
// start and keeps current from the store's word of each commit and read,
// and a goroutine that evicts from it in the background, never on a
// request's path:
//  1. least-recently-used blobs first;
//  2. then manifests that no tag record points to (nor an index that a tag
//     record points to), least recently used first;
//  3. then tag records past their TTL (the expiry a record holds, else
//     Config.ManifestTTL after its validation), which frees their
//     manifests for 2.
//
// Live tag records and their manifests are never evicted by a cap.
//
// Last use survives a restart as the files' modification times: a read
// moves an entry in memory at once and touches its file at most once per
// Config.TouchEvery. The package does not own the store's layout
// (cachestore) or what the records mean to the proxy beyond the fields it
// reads of a tag record (see tagRef).
package evict

import (
	"container/list"
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/regproxy/regproxy/cachestore"
)

// Store is what an Index needs of a store. *cachestore.Disk implements it.
type Store interface {
	cachestore.Store
	cachestore.Walker
	cachestore.Stater
	cachestore.Toucher
	cachestore.CondDeleter
	Observe(cachestore.Observer)
}

// Config configures an Index. The zero value evicts nothing: it only keeps
// the index (regproxy cache uses it so).
type Config struct {
	// MaxSize caps the bytes of committed entries. Zero means no cap.
	MaxSize int64
	// MinFree is the least free space, in bytes, to keep on the store's
	// filesystem; MinFreePercent the same as a share of the filesystem's
	// size. The larger applies. Zero means no floor.
	MinFree        int64
	MinFreePercent float64
	// FreeSpace reports the bytes available on the store's filesystem and
	// its size. Nil means the store's own FreeSpace method (Disk: statfs),
	// if it has one.
	FreeSpace func() (avail, size int64, err error)
	// ManifestTTL is how long a tag record is served before it must be
	// revalidated: past it, the record may be evicted. It applies to
	// records that hold no expiry of their own (those written before TTL
	// rules); a record's "expires" wins. Zero means one hour.
	ManifestTTL time.Duration
	// TouchEvery is how often at most an entry's last use is written to
	// the store. Zero means a minute.
	TouchEvery time.Duration
	// CheckEvery is how often Run looks at free space, and writes last
	// uses, when nothing wakes it sooner. Zero means ten seconds.
	CheckEvery time.Duration
	// ResyncEvery is how often Run walks the store again, to learn what
	// other processes removed or added. Zero means an hour.
	ResyncEvery time.Duration
	// Logger receives a line per eviction pass and errors. Nil means
	// slog.Default().
	Logger *slog.Logger
	// Now is the clock of last uses and TTLs. Nil means time.Now.
	Now func() time.Time
}

// Defaults of Config's zero values.
const (
	defaultTTL         = time.Hour
	defaultTouchEvery  = time.Minute
	defaultCheckEvery  = 10 * time.Second
	defaultResyncEvery = time.Hour
)

// Index is the index of a store's entries by last use, and their evictor.
// New attaches it to the store; Run loads it and evicts until its context
// ends.
type Index struct {
	store       Store
	maxSize     int64
	minFree     int64
	minFreePct  float64
	freeSpace   func() (int64, int64, error) // nil: no floor
	ttl         time.Duration
	touchEvery  time.Duration
	checkEvery  time.Duration
	resyncEvery time.Duration
	log         *slog.Logger
	now         func() time.Time

	wake chan struct{} // a commit happened: Run looks whether to evict

	mu      sync.Mutex // guards the fields below; never held during I/O
	entries map[string]*entry
	lru     [2]list.List // of *entry: blobs, manifest bodies; front is least recently used
	count   [numKinds]int
	bytes   [numKinds]int64
	loaded  bool                 // the walk of the store is merged in
	dirty   map[string]time.Time // last uses to write with Touch
	unsized []*entry             // opened before the walk reported them, or never reported
	reading map[string]int       // keys the index itself reads: not uses
	free    freeState
	stuck   bool // out of bounds with nothing to evict, and that was logged
	evicted struct {
		entries int64
		bytes   int64
	}
}

// New returns an Index of store and makes the store report its commits and
// reads to it. Call it before the store serves requests, and Run (or Load)
// after.
func New(store Store, cfg Config) *Index {
	ix := &Index{
		store:       store,
		maxSize:     cfg.MaxSize,
		minFree:     cfg.MinFree,
		minFreePct:  cfg.MinFreePercent,
		freeSpace:   cfg.FreeSpace,
		ttl:         orDefault(cfg.ManifestTTL, defaultTTL),
		touchEvery:  orDefault(cfg.TouchEvery, defaultTouchEvery),
		checkEvery:  orDefault(cfg.CheckEvery, defaultCheckEvery),
		resyncEvery: orDefault(cfg.ResyncEvery, defaultResyncEvery),
		log:         cfg.Logger,
		now:         cfg.Now,
		wake:        make(chan struct{}, 1),
		entries:     make(map[string]*entry),
		dirty:       make(map[string]time.Time),
		reading:     make(map[string]int),
		free:        freeState{lastAvail: -1},
	}
	if ix.log == nil {
		ix.log = slog.Default()
	}
	if ix.now == nil {
		ix.now = time.Now
	}
	if fs, ok := store.(interface{ FreeSpace() (int64, int64, error) }); ok && ix.freeSpace == nil {
		ix.freeSpace = fs.FreeSpace
	}
	if ix.minFree <= 0 && ix.minFreePct <= 0 {
		ix.freeSpace = nil
	}
	store.Observe(ix)
	return ix
}

func orDefault(v, def time.Duration) time.Duration {
	if v <= 0 {
		return def
	}
	return v
}

// Run loads the index (see Load), then evicts whenever a commit or the
// clock says the cache is out of bounds, until ctx ends. Last uses not yet
// written are written before it returns. It returns Load's error, or nil
// once ctx ended.
func (ix *Index) Run(ctx context.Context) error {
	defer ix.flush(context.WithoutCancel(ctx))
	if err := ix.Load(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	tick := time.NewTicker(ix.checkEvery)
	defer tick.Stop()
	resync := time.NewTicker(ix.resyncEvery)
	defer resync.Stop()
	for {
		ix.tidy(ctx)
		ix.evict(ctx, ix.need)
		select {
		case <-ctx.Done():
			return nil
		case <-ix.wake:
		case <-tick.C:
		case <-resync.C:
			if err := ix.resync(ctx); err != nil && ctx.Err() == nil {
				ix.log.Warn("cache: cannot resync the index", "err", err)
			}
		}
	}
}

// tidy writes pending last uses and sizes the entries the walk missed.
func (ix *Index) tidy(ctx context.Context) {
	ix.flush(ctx)
	ix.sizeUnsized(ctx)
}

// poke wakes Run without blocking.
func (ix *Index) poke() {
	select {
	case ix.wake <- struct{}{}:
	default:
	}
}
