package fill

import (
	"context"
	"errors"
	"io"
)

// Wait blocks until the leader has started or abandoned the fill, or ctx
// ends. After it returns nil, Size is known.
func (f *Fill) Wait(ctx context.Context) error {
	select {
	case <-f.started:
	case <-ctx.Done():
		return ctx.Err()
	}
	if f.abandoned {
		return ErrAbandoned
	}
	return nil
}

// Size is the length upstream announced, or -1. Valid after Wait.
func (f *Fill) Size() int64 { return f.size }

// NewReader waits for the fill to start and returns a reader from byte 0,
// however late the caller joined. A fill that has ended and let go of its
// spool file returns ErrFinished: the blob is then in the store, or the
// fill failed and a new one may start. ctx is the reading client's: it bounds
// only this reader's waits, never the fill. The caller must Close it.
func (f *Fill) NewReader(ctx context.Context) (*Reader, error) {
	if err := f.Wait(ctx); err != nil {
		return nil, err
	}
	if !f.acquire() {
		return nil, ErrFinished
	}
	return &Reader{fill: f, ctx: ctx}, nil
}

// Reader reads a fill's bytes as they arrive. It never returns the last
// byte of a blob of known size before the digest has been verified and the
// blob committed, so a client that counts bytes cannot take an unverified
// blob for a complete one. If the fill fails, Read returns its error.
type Reader struct {
	fill   *Fill
	ctx    context.Context
	off    int64
	closed bool
}

// Read blocks until bytes past the current offset are available, the fill
// ends, or the reader's context ends.
func (r *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		avail, wait, err := r.fill.readable(r.off)
		if avail > 0 {
			n, rerr := r.fill.file.ReadAt(p[:min(int64(len(p)), avail)], r.off)
			r.off += int64(n)
			if rerr == io.EOF && n > 0 {
				rerr = nil
			}
			return n, rerr
		}
		if err != nil {
			return 0, err
		}
		select {
		case <-wait:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

// readable reports how many bytes from off may be read now. With none, it
// returns the terminal error (io.EOF once the digest is verified) or a
// channel that closes on the next change. A failure after verification
// (of the commit, say) does not concern readers: their bytes are right.
func (f *Fill) readable(off int64) (avail int64, wait <-chan struct{}, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	limit := f.written
	if !f.verified && f.size > 0 {
		limit = min(limit, f.size-1) // hold back the last byte until verified
	}
	if off < limit {
		return limit - off, nil, nil
	}
	switch {
	case f.verified:
		return 0, nil, io.EOF
	case f.done:
		return 0, nil, f.err
	}
	return 0, f.notify, nil
}

var errSeekUnknownSize = errors.New("fill: cannot seek a stream of unknown size")

// Seek sets the offset for the next Read, as io.Seeker. Seeking relative to
// the end needs a known size, which http.ServeContent uses for Range.
func (r *Reader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		if r.fill.size < 0 {
			return 0, errSeekUnknownSize
		}
		offset += r.fill.size
	default:
		return 0, errors.New("fill: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("fill: negative position")
	}
	r.off = offset
	return offset, nil
}

// Close releases the reader's hold on the spool file. It is idempotent.
func (r *Reader) Close() error {
	if !r.closed {
		r.closed = true
		r.fill.release()
	}
	return nil
}
