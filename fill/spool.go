package fill

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// SpoolFile is the file a fill streams a blob into. It is written at
// explicit offsets, so that a short write (a full disk) can never shift the
// bytes after it, and read by any number of readers while it grows.
// *os.File implements it.
type SpoolFile interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Close() error
	// Name is the file's path, which FileImporter.ImportFile adopts.
	Name() string
}

// SpoolCreator is implemented by stores that create their fills' spool
// files themselves, in dir, to account for what fills write (tests use it
// to fill the disk). Without it a fill creates an *os.File in dir.
type SpoolCreator interface {
	CreateSpool(dir string) (SpoolFile, error)
}

func (f *Fill) createSpool() (SpoolFile, error) {
	if sc, ok := f.group.store.(SpoolCreator); ok {
		return sc.CreateSpool(f.group.spoolDir)
	}
	file, err := os.CreateTemp(f.group.spoolDir, "fill-*")
	if err != nil {
		return nil, err
	}
	return file, nil
}

// append adds upstream bytes, already hashed, for the readers: to the spool
// file while it takes them, else to the relay window.
//
// A failed write is the local disk's failure, never upstream's: it is not
// resumed. The spool keeps only what earlier writes put there whole, so
// readers never see the part of a buffer that a short write left behind,
// and the bytes go on through the window.
func (f *Fill) append(p []byte) error {
	// Only this goroutine writes file, spooled and spoolErr, so it reads
	// them without the lock.
	if f.file != nil && f.spoolErr == nil {
		_, err := f.file.WriteAt(p, f.spooled)
		if err == nil {
			f.mu.Lock()
			f.spooled += int64(len(p))
			f.received = f.spooled
			f.wake()
			f.mu.Unlock()
			return nil
		}
		f.stopSpooling(fmt.Errorf("write spool file at byte %d: %w", f.spooled, err))
	}
	return f.relay(p)
}

// stopSpooling turns the fill into a relay: from now on its bytes go to its
// readers through a bounded window in memory, and nothing is committed.
// The spool file is removed at once; its space returns when the last reader
// of its first bytes lets go.
func (f *Fill) stopSpooling(err error) {
	f.group.log.Warn("blob fill cannot spool; relaying to its clients without caching",
		"digest", f.digest, "err", err)
	f.mu.Lock()
	f.spoolErr = err
	f.win = newWindow(f.group.window, f.spooled)
	f.mu.Unlock()
	if f.file != nil {
		os.Remove(f.file.Name())
	}
}

var (
	errNoReaders  = errors.New("no reader left to relay to")
	errFellBehind = errors.New("fill: reader fell behind the relay window")
	errTooSlow    = errors.New("fill: reader took no byte for the stall timeout while the relay waited for it")
)

// relay passes p to the readers through the window. It waits for room
// rather than drop bytes a reader still needs: the upstream is read no
// faster than the slowest reader takes its bytes.
func (f *Fill) relay(p []byte) error {
	for len(p) > 0 {
		k := min(len(p), len(f.win.buf))
		if err := f.makeRoom(k); err != nil {
			return err
		}
		f.mu.Lock()
		f.win.push(p[:k])
		f.received += int64(k)
		f.wake()
		f.mu.Unlock()
		p = p[k:]
	}
	return nil
}

// makeRoom waits until the window can take n more bytes. It lets go of the
// bytes every reader has read, waits for the readers that have not, and
// cuts those that take nothing for the stall timeout, so that a stalled
// client cannot hold the others for longer. With no reader left the relay
// has no purpose, and ends.
func (f *Fill) makeRoom(n int) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	held := int64(-1)
	for {
		f.mu.Lock()
		lo, ok := f.holdLocked()
		if ok {
			f.win.drop(lo)
		}
		free := f.win.free()
		f.mu.Unlock()
		switch {
		case !ok:
			return errNoReaders
		case free >= n:
			return nil
		case lo != held: // the slowest reader moved: a new stall period
			held = lo
			if timer == nil {
				timer = time.NewTimer(f.group.stall)
			} else {
				timer.Reset(f.group.stall)
			}
		}
		select {
		case <-f.progress:
		case <-timer.C:
			f.cut(held)
		case <-f.ctx.Done():
			return f.ctx.Err()
		}
	}
}

// holdLocked returns the lowest offset a live reader still needs from the
// window, and whether there is any such reader. A reader still in the
// spool file needs the window from its start. mu must be held.
func (f *Fill) holdLocked() (int64, bool) {
	lo, any := f.win.hi(), false
	for r := range f.readers {
		at := max(r.off, f.spooled)
		if r.err != nil || at < f.win.lo {
			continue // cut, or fallen behind: its next Read fails
		}
		lo, any = min(lo, at), true
	}
	return lo, any
}

// cut ends the readers that hold the window at at.
func (f *Fill) cut(at int64) {
	f.mu.Lock()
	n := 0
	for r := range f.readers {
		if r.err == nil && max(r.off, f.spooled) == at {
			r.err = errTooSlow
			n++
		}
	}
	f.wake()
	f.mu.Unlock()
	f.group.log.Warn("relay cut clients that stopped reading", "digest", f.digest, "offset", at, "clients", n)
}

// signal tells a relay waiting for room that a reader moved. mu must be
// held.
func (f *Fill) signal() {
	if f.win == nil {
		return
	}
	select {
	case f.progress <- struct{}{}:
	default:
	}
}

// window is the relay buffer of a fill whose spool takes no more bytes: the
// most recent bytes of the blob, [lo, lo+n), in a ring.
type window struct {
	buf []byte
	lo  int64 // blob offset of the oldest byte held
	n   int   // bytes held
}

func newWindow(size int, lo int64) *window { return &window{buf: make([]byte, size), lo: lo} }

func (w *window) hi() int64 { return w.lo + int64(w.n) }
func (w *window) free() int { return len(w.buf) - w.n }

// drop lets go of the bytes before to.
func (w *window) drop(to int64) {
	if to > w.lo {
		k := min(to, w.hi()) - w.lo
		w.lo += k
		w.n -= int(k)
	}
}

// push appends p, which must fit.
func (w *window) push(p []byte) {
	at := int(w.hi() % int64(len(w.buf)))
	k := copy(w.buf[at:], p)
	copy(w.buf, p[k:])
	w.n += len(p)
}

// copyAt copies bytes from off, which must be in [lo, hi), into p.
func (w *window) copyAt(p []byte, off int64) int {
	p = p[:min(int64(len(p)), w.hi()-off)]
	at := int(off % int64(len(w.buf)))
	k := copy(p, w.buf[at:])
	copy(p[k:], w.buf)
	return len(p)
}
