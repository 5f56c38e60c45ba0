// Package tiered is a cachestore.Store in two tiers: a bounded local disk
// store in front of a remote store that replicas share (Azure). It owns
// which tier serves a read and what each tier is given:
//   - a read is served by the local tier when it holds the entry, else by the
//     remote one, and a Content entry read whole from the remote store is
//     copied into the local tier as it streams to the caller;
//   - a Content entry is written to both tiers at once, a Record to the
//     remote store only: records change, and a local copy would go on
//     serving one after another replica replaced it.
//
// So the local tier holds Content only, which never changes under a key,
// and no copy there can be out of date. Its bound is not this package's:
// the caller runs an eviction index (cachestore/evict) on Local(). Nor is
// the remote store's verification: an entry copied from it is trusted as
// the remote store trusted it when it was committed.
package tiered

import (
	"context"
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"log/slog"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// Store is a cachestore.Store over a local and a remote tier. It is safe
// for concurrent use; Close it when done, after its readers.
type Store struct {
	local  *cachestore.Disk
	remote cachestore.Store
	log    *slog.Logger

	mu      sync.Mutex
	copying map[string]bool // keys a reader is copying into the local tier
	wg      sync.WaitGroup  // local commits of copies in progress
}

var _ cachestore.Store = (*Store)(nil)

// New returns a Store that keeps copies of remote's Content entries in
// local. A nil log means slog.Default().
func New(local *cachestore.Disk, remote cachestore.Store, log *slog.Logger) *Store {
	if log == nil {
		log = slog.Default()
	}
	return &Store{local: local, remote: remote, log: log, copying: make(map[string]bool)}
}

// Local returns the local tier, for the eviction index that bounds it.
func (s *Store) Local() *cachestore.Disk { return s.local }

// Close waits for the copies being committed into the local tier, then
// closes the remote store if it has a Close method.
func (s *Store) Close() error {
	s.wg.Wait()
	if c, ok := s.remote.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Open implements cachestore.Store: the local tier's entry, else the remote
// store's. A Content entry from the remote store is copied into the local
// tier if the caller reads it whole, from its first byte on (a GET); a HEAD
// or a Range request reads it from the remote store and copies nothing.
// A local tier that fails is logged and passed over.
func (s *Store) Open(ctx context.Context, key string) (cachestore.Reader, error) {
	r, err := s.local.Open(ctx, key)
	switch {
	case err == nil:
		return r, nil
	case errors.Is(err, cachestore.ErrInvalidKey):
		return nil, err
	case !errors.Is(err, cachestore.ErrNotFound):
		s.log.Warn("local cache read failed; reading the remote store", "key", key, "err", err)
	}
	r, err = s.remote.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	if kr, ok := r.(cachestore.KindReader); ok && kr.Kind() == cachestore.Content {
		return &copier{Reader: r, s: s, key: key}, nil
	}
	return r, nil
}

// Create implements cachestore.Store. A Content entry goes to both tiers,
// and its commit is the remote store's: a local tier that fails is logged
// and passed over. A Record goes to the remote store only.
func (s *Store) Create(ctx context.Context, key string, opts cachestore.Options) (cachestore.Writer, error) {
	rw, err := s.remote.Create(ctx, key, opts)
	if err != nil || opts.Kind != cachestore.Content {
		return rw, err
	}
	lw, err := s.local.Create(ctx, key, opts)
	if err != nil {
		s.log.Warn("local cache write failed", "key", key, "err", err)
		return rw, nil
	}
	return &writer{remote: rw, local: lw, s: s, key: key}, nil
}

// writer writes a Content entry to both tiers.
type writer struct {
	remote cachestore.Writer
	local  cachestore.Writer // nil once it failed
	s      *Store
	key    string
}

// Write implements io.Writer. What the remote writer takes goes to the
// local one; a local failure only ends the local copy.
func (w *writer) Write(p []byte) (int, error) {
	n, err := w.remote.Write(p)
	if w.local != nil && n > 0 {
		if _, lerr := w.local.Write(p[:n]); lerr != nil {
			w.dropLocal(lerr)
		}
	}
	return n, err
}

func (w *writer) dropLocal(err error) {
	w.s.log.Warn("local cache write failed", "key", w.key, "err", err)
	w.local.Cancel()
	w.local = nil
}

// Commit implements cachestore.Writer. The local copy is committed even if
// the remote commit failed (Azure unreachable): a local hit then spares
// this replica the upstream, though no other replica sees the entry. The
// remote commit's error is returned.
func (w *writer) Commit(ctx context.Context, d digest.Digest) error {
	err := w.remote.Commit(ctx, d)
	if w.local != nil {
		if lerr := w.local.Commit(ctx, d); lerr != nil && err == nil {
			w.s.log.Warn("local cache commit failed", "key", w.key, "err", lerr)
		}
		w.local = nil
	}
	return err
}

// Cancel implements cachestore.Writer.
func (w *writer) Cancel() error {
	if w.local != nil {
		w.local.Cancel()
		w.local = nil
	}
	return w.remote.Cancel()
}

// copier reads a Content entry from the remote store and copies what the
// caller reads into the local tier, as long as the caller reads it in order
// from its first byte; Close commits the copy if it is whole. One reader of
// a key copies at a time; the others just read.
type copier struct {
	cachestore.Reader // the remote store's
	s                 *Store
	key               string

	pos     int64             // of Read, as Seek moves it
	w       cachestore.Writer // the local copy; nil before the first byte or once it stopped
	h       hash.Hash         // sha256 of the copied bytes
	copied  int64             // bytes in w
	stopped bool              // the copy was given up, or another reader makes it
}

// Read implements io.Reader.
func (c *copier) Read(p []byte) (int, error) {
	n, err := c.Reader.Read(p)
	c.copy(p[:n])
	c.pos += int64(n)
	return n, err
}

// copy adds b, read at pos, to the local copy: the part past what it holds.
// A read that skips ahead of the copy ends it.
func (c *copier) copy(b []byte) {
	if c.stopped || len(b) == 0 {
		return
	}
	if c.pos > c.copied {
		c.stop()
		return
	}
	b = b[min(c.copied-c.pos, int64(len(b))):]
	if len(b) == 0 || !c.start() {
		return
	}
	if _, err := c.w.Write(b); err != nil {
		c.s.log.Warn("local cache write failed", "key", c.key, "err", err)
		c.stop()
		return
	}
	c.h.Write(b)
	c.copied += int64(len(b))
}

// start creates the local writer, unless another reader of the key copies
// it already. It reports whether the copy goes on.
func (c *copier) start() bool {
	if c.w != nil {
		return true
	}
	if c.stopped {
		return false
	}
	c.s.mu.Lock()
	busy := c.s.copying[c.key]
	c.s.copying[c.key] = true
	c.s.mu.Unlock()
	if busy {
		c.stopped = true
		return false
	}
	w, err := c.s.local.Create(context.Background(), c.key,
		cachestore.Options{Kind: cachestore.Content, MediaType: c.MediaType()})
	if err != nil {
		c.s.log.Warn("local cache write failed", "key", c.key, "err", err)
		c.release()
		c.stopped = true
		return false
	}
	c.w, c.h = w, sha256.New()
	return true
}

// stop gives up the copy.
func (c *copier) stop() {
	c.stopped = true
	if c.w != nil {
		c.w.Cancel()
		c.w = nil
		c.release()
	}
}

func (c *copier) release() {
	c.s.mu.Lock()
	delete(c.s.copying, c.key)
	c.s.mu.Unlock()
}

// Seek implements io.Seeker.
func (c *copier) Seek(offset int64, whence int) (int64, error) {
	pos, err := c.Reader.Seek(offset, whence)
	if err == nil {
		c.pos = pos
	}
	return pos, err
}

// Close implements io.Closer. A whole copy is committed in the background,
// so that the caller does not wait for the local disk's sync; Store.Close
// waits for it.
func (c *copier) Close() error {
	err := c.Reader.Close()
	if c.w == nil && !c.stopped && c.Size() == 0 {
		c.start() // an empty entry, which no Read copied
	}
	if c.w == nil || c.copied != c.Size() {
		c.stop()
		return err
	}
	w, d := c.w, digest.NewDigest(digest.SHA256, c.h)
	c.w = nil
	c.s.wg.Go(func() {
		defer c.release()
		// The bytes are the remote entry's, which was verified when it
		// was committed: they are committed locally under their own digest.
		if err := w.Commit(context.Background(), d); err != nil {
			c.s.log.Warn("local cache commit failed", "key", c.key, "err", err)
		}
	})
	return err
}
