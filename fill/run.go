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

// Body is the upstream stream a leader hands to Start.
type Body struct {
	// Reader is the response body; the fill closes it.
	Reader io.ReadCloser
	// Size is the announced length, or -1 when upstream sent none.
	Size int64
	// Resume reopens the stream at offset after a cut (a Range request). It
	// must return a body that starts exactly at offset, or an error. Nil
	// means the stream cannot be resumed.
	Resume func(ctx context.Context, offset int64) (io.ReadCloser, error)
}

// Fill is one digest's fetch in progress. Readers follow its spool file.
type Fill struct {
	group  *Group
	digest digest.Digest
	ctx    context.Context // the fill's own: detached from clients, with a timeout
	cancel context.CancelFunc

	started chan struct{} // closed by Start or Abandon
	// Set before started is closed and read-only afterwards.
	abandoned bool
	size      int64
	file      *os.File // the spool file, shared by all readers through ReadAt

	mu       sync.Mutex    // protects the fields below
	written  int64         // bytes in file
	verified bool          // all bytes are in and match the digest
	done     bool          // the fill has ended (committed, or failed)
	err      error         // why the fill failed; nil after a verified commit
	notify   chan struct{} // closed and replaced whenever written or done changes
	refs     int           // the fill itself plus open readers; file closes at 0
}

// Context is the fill's own context: the leader makes its upstream request
// under it so that no client's disconnect cancels the fetch.
func (f *Fill) Context() context.Context { return f.ctx }

// Digest is the digest being filled.
func (f *Fill) Digest() digest.Digest { return f.digest }

// Abandon tells waiting readers that this fill will not run (the upstream
// answered something other than the blob). Only the leader calls it.
func (f *Fill) Abandon() {
	f.abandoned = true
	close(f.started)
	f.group.forget(f)
	f.cancel()
	f.group.wg.Done()
}

// Start begins streaming b into the spool file and returns at once. Only
// the leader calls it. If the spool file cannot be created the fill fails
// and readers get the error.
func (f *Fill) Start(b Body) {
	f.size = b.Size
	file, err := os.CreateTemp(f.group.spoolDir, "fill-*")
	f.file = file
	close(f.started)
	if err != nil {
		b.Reader.Close()
		f.finish(fmt.Errorf("fill %s: create spool file: %w", f.digest, err))
		f.group.wg.Done()
		return
	}
	go func() {
		defer f.group.wg.Done()
		f.finish(f.run(b))
	}()
}

// run copies the body into the spool file, resuming after cuts, then
// verifies and commits. Its error is what every reader sees.
func (f *Fill) run(b Body) error {
	digester := f.digest.Algorithm().Hash()
	body := b.Reader
	defer func() { body.Close() }()
	for resumes := 0; ; resumes++ {
		err := f.copy(body, digester)
		if err == nil {
			break
		}
		if !f.canResume(b, resumes, err) {
			return fmt.Errorf("fill %s: read upstream at byte %d: %w", f.digest, f.progress(), err)
		}
		body.Close()
		f.group.log.Info("resuming cut blob fill", "digest", f.digest, "offset", f.progress(), "attempt", resumes+1, "err", err)
		if body, err = b.Resume(f.ctx, f.progress()); err != nil {
			body = io.NopCloser(nil)
			return fmt.Errorf("fill %s: resume at byte %d: %w", f.digest, f.progress(), err)
		}
	}
	return f.verifyAndCommit(digester)
}

// canResume reports whether a failed copy should be retried from where it
// stopped: only for cuts (not for our own cancellation), with a known size.
func (f *Fill) canResume(b Body, resumes int, err error) bool {
	return b.Resume != nil && b.Size >= 0 && resumes < f.group.maxResumes &&
		f.ctx.Err() == nil && !errors.Is(err, errTooLong)
}

var errTooLong = errors.New("upstream sent more bytes than announced")

// copy appends body to the spool file until EOF, publishing progress after
// every chunk so that readers see bytes as they arrive.
func (f *Fill) copy(body io.Reader, h hash.Hash) error {
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if f.size >= 0 && f.progress()+int64(n) > f.size {
				return errTooLong
			}
			if _, err := f.file.Write(buf[:n]); err != nil {
				return fmt.Errorf("write spool file: %w", err)
			}
			h.Write(buf[:n])
			f.publish(int64(n))
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// copyBufs pools the fills' copy buffers so that memory stays flat however
// many fills run.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func (f *Fill) verifyAndCommit(h hash.Hash) error {
	n := f.progress()
	if f.size >= 0 && n != f.size {
		return fmt.Errorf("fill %s: %w", f.digest, errSizeMismatch(n, f.size))
	}
	if got := digest.NewDigest(f.digest.Algorithm(), h); got != f.digest {
		return fmt.Errorf("fill %s: got digest %s: %w", f.digest, got, cachestore.ErrDigestMismatch)
	}
	// Readers may finish now: what they were sent is the verified blob.
	// Only the cache waits for durability.
	f.markVerified()
	// Flush to disk before the rename makes the blob visible: hits are not
	// verified again, so a blob must never be visible before it is durable.
	if err := f.file.Sync(); err != nil {
		return fmt.Errorf("fill %s: sync spool file: %w", f.digest, err)
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

// commit hands the verified spool file to the store: a rename where the
// store can adopt files, else a copy through a store writer (which verifies
// again on its own Commit).
//
// Readers already have the verified bytes, so ctx must not be cancelled by
// Close: a shutdown waits for the rename instead of throwing the blob away.
func (f *Fill) commit(ctx context.Context, size int64) error {
	key := cachestore.BlobKey(f.digest)
	store := f.group.store
	if imp, ok := store.(cachestore.FileImporter); ok && imp.SpoolDir() == f.group.spoolDir {
		return imp.ImportFile(ctx, key, f.file.Name(), size, f.digest)
	}
	w, err := store.Create(ctx, key)
	if err != nil {
		return err
	}
	defer w.Cancel()
	if _, err := io.Copy(w, io.NewSectionReader(f.file, 0, size)); err != nil {
		return err
	}
	return w.Commit(ctx, f.digest)
}

// finish records the outcome, wakes every reader and drops the fill's own
// reference. On failure the fill is forgotten first, so that no new request
// joins a dead fill, and the spool file is removed.
func (f *Fill) finish(err error) {
	if err != nil {
		f.group.forget(f)
		f.group.log.Warn("blob fill failed", "digest", f.digest, "err", err)
		if f.file != nil {
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

func (f *Fill) progress() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.written
}

func (f *Fill) publish(n int64) {
	f.mu.Lock()
	f.written += n
	f.wake()
	f.mu.Unlock()
}

// wake must be called with mu held.
func (f *Fill) wake() {
	close(f.notify)
	f.notify = make(chan struct{})
}

// acquire takes a reference to the spool file, unless it is already
// closed (the fill ended and every reader let go).
func (f *Fill) acquire() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.refs == 0 {
		return false
	}
	f.refs++
	return true
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
