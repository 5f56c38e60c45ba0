package fill

import (
	"context"
	"errors"
	"io"
)

// Reader reads a fill's bytes as they arrive, from its spool file or its
// relay window. It never returns the last byte of a blob of known size
// before the digest has been verified, so a client that counts bytes cannot
// take an unverified blob for a complete one; the commit to the store may
// still be under way then. If the fill fails, Read returns its error.
type Reader struct {
	fill   *Fill
	ctx    context.Context // the reading client's: it bounds this reader's waits, never the fill
	off    int64           // next byte to read; written by the reader under fill.mu
	err    error           // set by the fill when it cuts this reader; guarded by fill.mu
	closed bool
}

// Read blocks until bytes past the current offset are available, the fill
// ends, or the reader's context ends.
func (r *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, inFile, wait, err := r.fill.next(r, p)
		switch {
		case n > 0:
			return n, nil
		case inFile > 0:
			return r.readFile(p[:min(int64(len(p)), inFile)])
		case err != nil:
			return 0, err
		}
		select {
		case <-wait:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

// readFile reads p from the spool file, which holds it whole.
func (r *Reader) readFile(p []byte) (int, error) {
	f := r.fill
	n, err := f.file.ReadAt(p, r.off)
	f.mu.Lock()
	r.off += int64(n)
	f.signal()
	f.mu.Unlock()
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// next serves r's next Read: bytes of the window are copied into p under
// the lock (n); bytes of the spool file are left for the caller to read
// (inFile, how many it may). With nothing to read, it returns the terminal
// error (io.EOF once the digest is verified) or a channel that closes on
// the next change. A failure after verification (of the commit, say) does
// not concern readers: their bytes are right.
func (f *Fill) next(r *Reader, p []byte) (n int, inFile int64, wait <-chan struct{}, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.err != nil {
		return 0, 0, nil, r.err
	}
	limit := f.received
	if !f.verified && f.size > 0 {
		limit = min(limit, f.size-1) // hold back the last byte until verified
	}
	switch off := r.off; {
	case off < limit && off < f.spooled:
		return 0, min(limit, f.spooled) - off, nil, nil
	case off < limit && f.win != nil && off >= f.win.lo:
		n = f.win.copyAt(p[:min(int64(len(p)), limit-off)], off)
		r.off += int64(n)
		f.signal()
		return n, 0, nil, nil
	case off < limit:
		return 0, 0, nil, errFellBehind
	case f.verified:
		return 0, 0, nil, io.EOF
	case f.done:
		return 0, 0, nil, f.err
	}
	return 0, 0, f.notify, nil
}

var errSeekUnknownSize = errors.New("fill: cannot seek a stream of unknown size")

// Seek sets the offset for the next Read, as io.Seeker. Seeking relative to
// the end needs a known size, which http.ServeContent uses for Range.
func (r *Reader) Seek(offset int64, whence int) (int64, error) {
	f := r.fill
	f.mu.Lock()
	defer f.mu.Unlock()
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		if f.size < 0 {
			return 0, errSeekUnknownSize
		}
		offset += f.size
	default:
		return 0, errors.New("fill: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("fill: negative position")
	}
	r.off = offset
	f.signal()
	return offset, nil
}

// Close releases the reader's hold on the spool file and on the relay
// window. It is idempotent.
func (r *Reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	f := r.fill
	f.mu.Lock()
	delete(f.readers, r)
	f.signal()
	f.mu.Unlock()
	f.release()
	return nil
}
