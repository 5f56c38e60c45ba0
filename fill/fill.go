// Package fill owns the fetching of content-addressed blobs into the cache:
// one fill per digest however many requests ask for it at once. Group.Do is
// its whole interface, in the shape of singleflight: the caller names a
// digest and hands over a function that fetches it upstream, and gets back a
// reader of the committed entry, of the fill in progress, or of a new fill
// that its function started.
//
// A fill streams upstream bytes into a local spool file that any number of
// readers follow while it grows, verifies the digest, and only then commits
// the file to a cachestore.Store: by a rename for a store that adopts files
// (cachestore.FileImporter), else by committing a store Writer that it fed
// from the file while the download ran, so that a remote store has little
// left to upload once the digest verifies. It belongs to no client: it runs
// under its own context, bounded by a timeout, and outlives the requests
// that asked for it. When the spool cannot take the bytes (a full disk, a
// file size limit), the fill relays them to its readers through a bounded
// window in memory instead, and commits nothing.
//
// The package knows nothing of HTTP: the caller's Fetch makes the upstream
// requests, and an answer that is not the blob comes back as a *Refused.
package fill

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// Config configures a Group.
type Config struct {
	// Store receives verified blobs. Required.
	Store cachestore.Store
	// SpoolDir holds the files of fills in progress. Empty means the store's
	// own SpoolDir when it is a cachestore.FileImporter (so committing is a
	// rename), else os.TempDir(). Into any other directory, or for any
	// other store, a fill copies its bytes into a store Writer while it
	// downloads, and commits that writer once the digest verifies.
	SpoolDir string
	// Timeout bounds a whole fill, resumes included. Zero means one hour.
	Timeout time.Duration
	// StallTimeout ends an upstream attempt that delivers no byte for this
	// long (waiting for the headers included); the fill then resumes or
	// fails. A fill that relays (see RelayWindow) also cuts a reader that
	// takes no byte for this long while it holds the window full. Zero
	// means one minute.
	StallTimeout time.Duration
	// MaxResumes bounds how often a cut upstream stream is resumed with a
	// Range request. Zero means 3; negative disables resuming.
	MaxResumes int
	// RelayWindow is how many bytes a fill keeps in memory for its readers
	// once its spool file takes no more (the disk is full). Zero means
	// 4 MiB.
	RelayWindow int
	// Logger receives one line per failed fill, and per fill that could not
	// spool. Nil means slog.Default().
	Logger *slog.Logger
	// Observer hears of every fill's start and end, for metrics. Nil means
	// no one listens.
	Observer Observer
}

// Group runs fills and coalesces requests for one digest onto one fill.
type Group struct {
	store      cachestore.Store
	spoolDir   string
	importer   cachestore.FileImporter // the store, if it adopts files from spoolDir by a rename; else nil
	timeout    time.Duration
	stall      time.Duration
	maxResumes int
	window     int
	log        *slog.Logger
	obs        Observer // nil: no one listens

	ctx    context.Context // cancelled by Close; every fill stops with it
	cancel context.CancelFunc
	wg     sync.WaitGroup // one per running fill goroutine

	mu    sync.Mutex // protects fills and closed; held only for the map
	fills map[digest.Digest]*Fill
	// closed is set by Close; Do then refuses to start fills so that
	// Close's Wait cannot race a late Add.
	closed bool
}

// Defaults of Config's zero values.
const (
	defaultTimeout     = time.Hour
	defaultStall       = time.Minute
	defaultMaxResumes  = 3
	defaultRelayWindow = 4 << 20
)

// New returns a Group that commits into cfg.Store.
func New(cfg Config) *Group {
	g := &Group{
		store:      cfg.Store,
		spoolDir:   cfg.SpoolDir,
		timeout:    orDefault(cfg.Timeout, defaultTimeout),
		stall:      orDefault(cfg.StallTimeout, defaultStall),
		maxResumes: cfg.MaxResumes,
		window:     orDefault(cfg.RelayWindow, defaultRelayWindow),
		log:        cfg.Logger,
		obs:        cfg.Observer,
		fills:      make(map[digest.Digest]*Fill),
	}
	imp, ok := cfg.Store.(cachestore.FileImporter)
	switch {
	case ok && (g.spoolDir == "" || g.spoolDir == imp.SpoolDir()):
		g.spoolDir, g.importer = imp.SpoolDir(), imp
	case g.spoolDir == "":
		g.spoolDir = os.TempDir()
	}
	if g.maxResumes == 0 {
		g.maxResumes = defaultMaxResumes
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	return g
}

// orDefault returns v, or def when v is not positive.
func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// ErrClosed is returned by Do after Close.
var ErrClosed = errors.New("fill: group closed")

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
