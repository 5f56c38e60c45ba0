package fill

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// Fill is one digest's fetch in progress. It runs in three steps:
//  1. It tries the waiting callers' fetches in turn, until upstream answers
//     one with the blob; refusals go back to their callers.
//  2. It streams the blob into its spool file (or, once the spool takes no
//     more, through its relay window), resuming cuts from where they
//     stopped, while readers follow.
//  3. It verifies the digest, lets readers have the last byte, and commits
//     the spool file to the store: by a rename where the store adopts
//     files, else by committing the writer its stager fed all along.
type Fill struct {
	group  *Group
	digest digest.Digest
	ctx    context.Context // the fill's own: detached from clients, with a timeout
	cancel context.CancelFunc

	// Set by the fill's goroutine before started, read-only afterwards.
	size   int64
	file   SpoolFile // shared by all readers through ReadAt; nil if none could be made
	stager *stager   // copies file to the store as it grows; nil when the store imports it

	mu       sync.Mutex // protects the fields below
	waiters  []*waiter  // callers waiting for a fetch to return the blob, in order
	started  bool       // a fetch returned the blob: readers may join
	ended    bool       // no fetch did: new callers start a new fill
	received int64      // bytes received from upstream and hashed, in order
	spooled  int64      // the prefix of those in file; readers read them there
	spoolErr error      // why file takes no more bytes; nil while it takes them all
	win      *window    // the bytes after spooled, for readers, once spoolErr is set
	readers  map[*Reader]struct{}
	verified bool          // all bytes are in and match the digest
	done     bool          // the fill has ended (committed, relayed or failed)
	err      error         // why the fill failed; nil after a verified commit
	notify   chan struct{} // closed and replaced whenever received or done changes
	progress chan struct{} // a reader advanced or left: a relay waiting for room looks again
	refs     int           // the fill itself plus open readers; file closes at 0
	joiners  int           // readers handed out as Joined, for the Observer
}

func newFill(g *Group, reqCtx context.Context, d digest.Digest) *Fill {
	// reqCtx lends its values, never its cancellation: the fill is no
	// client's.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(reqCtx), g.timeout)
	stop := context.AfterFunc(g.ctx, cancel)
	return &Fill{
		group:    g,
		digest:   d,
		ctx:      ctx,
		cancel:   func() { stop(); cancel() },
		size:     -1,
		readers:  make(map[*Reader]struct{}),
		notify:   make(chan struct{}),
		progress: make(chan struct{}, 1),
		refs:     1, // the fill's own reference, dropped when it ends
	}
}

// run is the fill's goroutine.
func (f *Fill) run() {
	defer f.group.wg.Done()
	if f.inStore() {
		f.end(errInStore)
		return
	}
	began := f.observeStart()
	body, fetch, err := f.start()
	if err != nil {
		f.end(err)
		f.observeEnd(began, err)
		return
	}
	err = f.stream(body, fetch)
	f.finish(err)
	f.observeEnd(began, err)
}

// inStore reports whether the blob was committed after all: a fill that
// ended just before this one registered. Its waiters then look there.
func (f *Fill) inStore() bool {
	r, err := f.group.store.Open(f.ctx, cachestore.BlobKey(f.digest))
	if err != nil {
		return false
	}
	r.Close()
	return true
}

// stream copies the body into the spool, resuming after cuts, then
// verifies and commits. Its error is what every reader sees.
func (f *Fill) stream(body Body, fetch Fetch) error {
	h := f.digest.Algorithm().Hash()
	defer func() { body.Close() }()
	for resumes := 0; ; resumes++ {
		err := f.copy(body, h)
		if err == nil {
			break
		}
		if !f.canResume(resumes, err) {
			return fmt.Errorf("fill %s: read upstream at byte %d: %w", f.digest, f.received, err)
		}
		body.Close()
		f.group.log.Info("resuming cut blob fill", "digest", f.digest, "offset", f.received, "attempt", resumes+1, "err", err)
		if body, err = f.resume(fetch); err != nil {
			body = Body{ReadCloser: io.NopCloser(nil)}
			return fmt.Errorf("fill %s: resume at byte %d: %w", f.digest, f.received, err)
		}
	}
	return f.verifyAndCommit(h)
}

// resume reopens the stream where it stopped.
func (f *Fill) resume(fetch Fetch) (Body, error) {
	body, err := f.attempt(fetch, f.received)
	if err == nil && body.Size >= 0 && body.Size != f.size {
		body.Close()
		return Body{}, fmt.Errorf("upstream now announces %d bytes, not %d", body.Size, f.size)
	}
	return body, err
}

// canResume reports whether a failed copy should go on from where it
// stopped: only after a cut or a stall upstream (not our own cancellation,
// not a local failure), with a known size.
func (f *Fill) canResume(resumes int, err error) bool {
	return f.size >= 0 && resumes < f.group.maxResumes && f.ctx.Err() == nil &&
		!errors.Is(err, errTooLong) && !errors.Is(err, errNoReaders)
}

var (
	errTooLong = errors.New("upstream sent more bytes than announced")
	errShort   = errors.New("upstream stream ended before the announced size")
)

// copy appends body to the fill until EOF, publishing progress after every
// chunk so that readers see bytes as they arrive. The hash covers exactly
// the bytes readers are given, in order.
func (f *Fill) copy(body io.Reader, h hash.Hash) error {
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if f.size >= 0 && f.received+int64(n) > f.size {
				return errTooLong
			}
			h.Write(buf[:n])
			if err := f.append(buf[:n]); err != nil {
				return err
			}
		}
		switch {
		case rerr == io.EOF && f.size >= 0 && f.received < f.size:
			return errShort // a clean end, too early: resumed like a cut
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			return rerr
		}
	}
}

// copyBufs pools the fills' copy buffers so that memory stays flat however
// many fills run.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func (f *Fill) verifyAndCommit(h hash.Hash) error {
	n := f.received
	if f.size >= 0 && n != f.size {
		return fmt.Errorf("fill %s: got %d bytes, upstream announced %d", f.digest, n, f.size)
	}
	if got := digest.NewDigest(f.digest.Algorithm(), h); got != f.digest {
		return fmt.Errorf("fill %s: got digest %s: %w", f.digest, got, cachestore.ErrDigestMismatch)
	}
	// Readers may finish now: what they were sent is the verified blob.
	// Only the cache waits for durability.
	f.markVerified()
	if f.spoolErr != nil {
		f.group.log.Warn("blob relayed without caching", "digest", f.digest, "size", n, "err", f.spoolErr)
		return nil
	}
	if err := f.commit(context.WithoutCancel(f.ctx), n); err != nil {
		return fmt.Errorf("fill %s: commit: %w", f.digest, err)
	}
	return nil
}

func (f *Fill) markVerified() {
	f.mu.Lock()
	f.verified = true
	f.wake()
	f.mu.Unlock()
}

// commit hands the verified blob to the store: the spool file itself where
// the store adopts files (by a rename), else the writer the stager fed
// while the fill ran, whose Commit checks the digest again; the spool file
// then goes.
//
// Readers already have the verified bytes, so ctx must not be cancelled by
// Close: a shutdown waits for the commit instead of throwing the blob away.
func (f *Fill) commit(ctx context.Context, size int64) error {
	if f.group.importer == nil {
		defer os.Remove(f.file.Name())
		return f.stager.commit(ctx)
	}
	// Flush to disk before the rename makes the blob visible: hits are not
	// verified again, so a blob must never be visible before it is durable.
	if err := f.file.Sync(); err != nil {
		return fmt.Errorf("sync spool file: %w", err)
	}
	return f.group.importer.ImportFile(ctx, cachestore.BlobKey(f.digest), f.file.Name(), size, f.digest)
}

// finish stops the stager, records the outcome, wakes every reader and
// drops the fill's own reference. On failure the fill is forgotten first, so that no new request
// joins a dead fill, and the spool file is removed.
func (f *Fill) finish(err error) {
	if f.stager != nil {
		f.stager.stop()
	}
	if err != nil {
		f.group.forget(f)
		if f.verified { // only the fill goroutine sets it
			f.group.log.Warn("blob served but not cached", "digest", f.digest, "err", err)
		} else {
			f.group.log.Warn("blob fill failed", "digest", f.digest, "err", err)
		}
		if f.file != nil && f.spoolErr == nil {
			os.Remove(f.file.Name())
		}
	}
	f.mu.Lock()
	f.done, f.err = true, err
	f.wake()
	f.mu.Unlock()
	if err == nil {
		f.group.forget(f)
	}
	f.cancel()
	f.release()
}

// wake must be called with mu held.
func (f *Fill) wake() {
	close(f.notify)
	f.notify = make(chan struct{})
}

// newBlob hands out a new reader from byte 0. mu must be held, and the fill
// must hold its spool file: it is started, and has not let go of it.
func (f *Fill) newBlob(ctx context.Context, src Source) *Blob {
	f.refs++
	if src == Joined {
		f.joiners++
	}
	r := &Reader{fill: f, ctx: ctx}
	f.readers[r] = struct{}{}
	return &Blob{ReadSeekCloser: r, Size: f.size, Source: src}
}

func (f *Fill) release() {
	f.mu.Lock()
	f.refs--
	last := f.refs == 0
	f.mu.Unlock()
	if last && f.file != nil {
		f.file.Close()
	}
}
