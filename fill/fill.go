// Package fill owns the fetching of content-addressed blobs into the cache:
// one fill per digest however many requests ask for it at once. A fill
// streams upstream bytes into a local spool file that any number of readers
// follow while it grows, verifies the digest, and only then commits the file
// to a cachestore.Store. A fill belongs to no client: it runs under its own
// context, bounded by a timeout, and outlives the request that started it.
//
// The package knows nothing of HTTP. Its caller (the proxy) makes the first
// upstream request and hands the body over with Start, or gives up with
// Abandon so that waiting requests fetch for themselves.
package fill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// ErrAbandoned is returned by Fill.NewReader when the fill's leader got no
// usable upstream response (an error status, say). The caller should fetch
// on its own account, e.g. by joining again.
var ErrAbandoned = errors.New("fill: abandoned before start")

// ErrFinished is returned by Fill.NewReader when the fill has already
// ended and closed its spool file. The caller should look in the store,
// and join again if the blob is not there.
var ErrFinished = errors.New("fill: already finished")

// Config configures a Group.
type Config struct {
	// Store receives verified blobs. Required.
	Store cachestore.Store
	// SpoolDir holds the files of fills in progress. Empty means the store's
	// own SpoolDir when it is a cachestore.FileImporter (so committing is a
	// rename), else os.TempDir().
	SpoolDir string
	// Timeout bounds a whole fill, resumes included. Zero means one hour.
	Timeout time.Duration
	// MaxResumes bounds how often a cut upstream stream is resumed with a
	// Range request. Zero means 3; negative disables resuming.
	MaxResumes int
	// Logger receives one line per failed fill. Nil means slog.Default().
	Logger *slog.Logger
}

// Group runs fills and coalesces requests for one digest onto one fill.
type Group struct {
	store      cachestore.Store
	spoolDir   string
	timeout    time.Duration
	maxResumes int
	log        *slog.Logger

	ctx    context.Context // cancelled by Close; every fill stops with it
	cancel context.CancelFunc
	wg     sync.WaitGroup // one per running fill goroutine

	mu    sync.Mutex // protects fills and closed
	fills map[digest.Digest]*Fill
	// closed is set by Close; Join then refuses to start fills so that
	// Close's Wait cannot race a late Add.
	closed bool
}

// New returns a Group that commits into cfg.Store.
func New(cfg Config) *Group {
	g := &Group{
		store:      cfg.Store,
		spoolDir:   cfg.SpoolDir,
		timeout:    cfg.Timeout,
		maxResumes: cfg.MaxResumes,
		log:        cfg.Logger,
		fills:      make(map[digest.Digest]*Fill),
	}
	if g.spoolDir == "" {
		g.spoolDir = os.TempDir()
		if imp, ok := cfg.Store.(cachestore.FileImporter); ok {
			g.spoolDir = imp.SpoolDir()
		}
	}
	if g.timeout <= 0 {
		g.timeout = time.Hour
	}
	if g.maxResumes == 0 {
		g.maxResumes = 3
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	return g
}

// ErrClosed is returned by Join after Close.
var ErrClosed = errors.New("fill: group closed")

// Join returns the fill in progress for d, or registers a new one. When
// leader is true the caller must call exactly one of Start or Abandon on it;
// reqCtx only lends its values (never its cancellation) to the fill.
func (g *Group) Join(reqCtx context.Context, d digest.Digest) (f *Fill, leader bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, false, ErrClosed
	}
	if f, ok := g.fills[d]; ok {
		return f, false, nil
	}
	f = newFill(g, reqCtx, d)
	g.fills[d] = f
	g.wg.Add(1) // released when the fill ends, by Start's goroutine or Abandon
	return f, true, nil
}

// InFlight reports how many fills are registered now (for metrics and tests).
func (g *Group) InFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.fills)
}

// Close cancels every fill in progress and waits for their goroutines.
func (g *Group) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.cancel()
	g.wg.Wait()
}

// forget removes f from the map so that later requests start afresh (after a
// failure) or find the committed entry in the store (after success).
func (g *Group) forget(f *Fill) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fills[f.digest] == f {
		delete(g.fills, f.digest)
	}
}

func newFill(g *Group, reqCtx context.Context, d digest.Digest) *Fill {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(reqCtx), g.timeout)
	stop := context.AfterFunc(g.ctx, cancel)
	f := &Fill{
		group:   g,
		digest:  d,
		ctx:     ctx,
		cancel:  func() { stop(); cancel() },
		started: make(chan struct{}),
		notify:  make(chan struct{}),
		refs:    1, // the fill's own reference, dropped when it ends
	}
	return f
}

// errSizeMismatch reports a body whose length differs from what upstream
// announced.
func errSizeMismatch(got, want int64) error {
	return fmt.Errorf("fill: got %d bytes, upstream announced %d", got, want)
}

// Lookup returns the fill in progress for d, or nil. It never starts one.
func (g *Group) Lookup(d digest.Digest) *Fill {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fills[d]
}
