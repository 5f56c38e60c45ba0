package fill

import (
	"context"
	"errors"
	"fmt"

	"github.com/regproxy/regproxy/cachestore"
)

// stager copies a fill's spool file into a store Writer while the fill
// runs, for stores that cannot adopt the file by a rename (a remote store
// such as Azure, whose writer uploads blocks as they fill). It reads the
// spool, never the upstream stream, so however slowly the store takes
// bytes, the fill and its readers never wait for it: a stager that falls
// behind catches up from the local file. When the digest verifies, little
// is left to upload, and the commit makes the blob visible soon after its
// last upstream byte.
//
// A stager that fails (the store unreachable, say) stops; the fill goes on
// for its readers, and its commit reports why the blob was not cached.
type stager struct {
	fill *Fill
	// ctx bounds the writer, uploads included. It is not the fill's: a
	// shutdown that finds the blob verified waits for its commit rather
	// than throw it away, as for a rename. stop cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned

	// Written by run before done is closed; read after.
	w   cachestore.Writer // nil if Create failed
	err error             // why staging stopped short of the whole blob
}

// errSpoolStopped ends a stager whose fill stopped spooling: the fill
// relays, and commits nothing.
var errSpoolStopped = errors.New("the fill stopped spooling")

// startStagerLocked starts staging the spool file, which begin has just
// created, into a store writer. mu must be held: the stager holds a
// reference to the file, as readers do.
func (f *Fill) startStagerLocked() {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(f.ctx), f.group.timeout)
	s := &stager{fill: f, ctx: ctx, cancel: cancel, done: make(chan struct{})}
	f.stager = s
	f.refs++
	go s.run()
}

func (s *stager) run() {
	defer close(s.done)
	defer s.fill.release()
	s.err = s.copy()
}

// copy writes the spool file to a new writer as it grows, until the fill
// is verified and the writer has every byte.
func (s *stager) copy() error {
	f := s.fill
	w, err := f.group.store.Create(s.ctx, cachestore.BlobKey(f.digest), cachestore.Options{Kind: cachestore.Content})
	if err != nil {
		return err
	}
	s.w = w
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp
	var off int64
	for {
		n, complete, wait, err := f.stageable(off)
		switch {
		case err != nil:
			return err
		case n > 0:
			k := int(min(n, int64(len(buf))))
			if _, err := f.file.ReadAt(buf[:k], off); err != nil {
				return fmt.Errorf("read spool file at byte %d: %w", off, err)
			}
			if _, err := w.Write(buf[:k]); err != nil {
				return err
			}
			off += int64(k)
		case complete:
			return nil
		default:
			select {
			case <-wait:
			case <-s.ctx.Done():
				return s.ctx.Err()
			}
		}
	}
}

// stageable tells a stager that has written the spool's bytes before off
// how many more it may read there, or that it has them all (the digest
// verified), or what to wait for.
func (f *Fill) stageable(off int64) (n int64, complete bool, wait <-chan struct{}, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.spoolErr != nil:
		return 0, false, nil, errSpoolStopped
	case off < f.spooled:
		return f.spooled - off, false, nil, nil
	case f.verified:
		return 0, true, nil, nil
	case f.done:
		return 0, false, nil, errors.New("the fill failed")
	}
	return 0, false, f.notify, nil
}

// commit waits until the stager has written the whole verified blob, then
// commits its writer, which checks the digest once more.
func (s *stager) commit(ctx context.Context) error {
	select {
	case <-s.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if s.err != nil {
		return fmt.Errorf("stage to the store: %w", s.err)
	}
	return s.w.Commit(ctx, s.fill.digest)
}

// stop ends the stager, if it still runs, and discards what it staged
// unless it was committed.
func (s *stager) stop() {
	s.cancel()
	<-s.done
	if s.w != nil {
		s.w.Cancel() // a no-op after Commit
	}
}
