package main

import (
	"io"
	"sync"
	"time"
)

// Bounds of the log buffer: how long a line may wait, and how many bytes.
const (
	logFlushDelay = 50 * time.Millisecond
	logBufferSize = 64 << 10
)

// logWriter buffers what regproxy writes to stderr, so that the access log,
// one line per request, costs a write(2) per batch instead of one per
// request. A line is written when it has waited logFlushDelay, when
// logBufferSize bytes are waiting, or on Close, whichever comes first.
//
// slog hands each record over in one Write; logWriter appends it whole and
// writes batches whole and in order, one Write of the underlying writer
// each, so lines never interleave and never change order. A Write as large
// as the buffer, and every Write after Close, goes straight through, after
// what is waiting.
//
// Lines still waiting when the process dies without Close (a second
// SIGTERM, a crash) are lost: at most logFlushDelay's worth.
type logWriter struct {
	w io.Writer

	out   sync.Mutex // held while writing to w: batches go out one at a time, in order
	spare []byte     // the buffer not in use; guarded by out

	mu     sync.Mutex // guards buf, closed and timer's arming
	buf    []byte
	closed bool
	timer  *time.Timer // flushes buf; armed when a line enters an empty buf
}

// newLogWriter buffers writes to w until Close.
func newLogWriter(w io.Writer) *logWriter {
	l := &logWriter{w: w, buf: make([]byte, 0, logBufferSize), spare: make([]byte, 0, logBufferSize)}
	l.timer = time.AfterFunc(time.Hour, func() { l.flush() })
	l.timer.Stop()
	return l
}

// Write buffers p, or writes it through (see logWriter). A buffered p is
// reported written in full: an error writing it later is Close's to report.
func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	if l.closed || len(p) >= logBufferSize {
		l.mu.Unlock()
		l.out.Lock()
		defer l.out.Unlock()
		if err := l.flushLocked(); err != nil {
			return 0, err
		}
		return l.w.Write(p)
	}
	if len(l.buf) == 0 {
		l.timer.Reset(logFlushDelay)
	}
	l.buf = append(l.buf, p...)
	full := len(l.buf) >= logBufferSize
	l.mu.Unlock()
	if full {
		l.flush()
	}
	return len(p), nil
}

// Close writes what is waiting, and makes later writes go straight
// through. It returns the error of that last batch; earlier ones, written
// when their time came, had no caller to return an error to.
func (l *logWriter) Close() error {
	l.mu.Lock()
	l.closed = true
	l.timer.Stop()
	l.mu.Unlock()
	return l.flush()
}

func (l *logWriter) flush() error {
	l.out.Lock()
	defer l.out.Unlock()
	return l.flushLocked()
}

// flushLocked writes what is waiting, if anything. l.out must be held.
func (l *logWriter) flushLocked() error {
	l.mu.Lock()
	b := l.buf
	l.buf = l.spare[:0]
	l.mu.Unlock()
	l.spare = b[:0]
	if len(b) == 0 {
		return nil
	}
	_, err := l.w.Write(b)
	return err
}
