package cachestore

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// Memory is a Store (and Deleter and Stater) that keeps entries in
// memory, for tests. Its semantics are those of Disk: Commit verifies, and
// an entry is invisible until then.
type Memory struct {
	mu      sync.RWMutex // guards entries, never held while copying bytes
	entries map[string]memEntry
}

var (
	_ Store   = (*Memory)(nil)
	_ Deleter = (*Memory)(nil)
	_ Stater  = (*Memory)(nil)
)

// memEntry is a committed entry. data is never modified after commit, so
// readers share it without copying.
type memEntry struct {
	data      []byte
	mediaType string
	modTime   time.Time
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{entries: make(map[string]memEntry)}
}

// get returns key's entry or an error wrapping ErrInvalidKey or ErrNotFound.
func (m *Memory) get(op, key string) (memEntry, error) {
	if !ValidKey(key) {
		return memEntry{}, fmt.Errorf("%w: %q", ErrInvalidKey, key)
	}
	m.mu.RLock()
	e, ok := m.entries[key]
	m.mu.RUnlock()
	if !ok {
		return memEntry{}, fmt.Errorf("cachestore: %s %s: %w", op, key, ErrNotFound)
	}
	return e, nil
}

// Stat implements Stater.
func (m *Memory) Stat(_ context.Context, key string) (Entry, error) {
	e, err := m.get("stat", key)
	if err != nil {
		return Entry{}, err
	}
	return Entry{Key: key, Size: int64(len(e.data)), LastUse: e.modTime}, nil
}

// memReader adds Close and MediaType to a bytes.Reader, which already has
// Size.
type memReader struct {
	*bytes.Reader
	mediaType string
}

func (memReader) Close() error { return nil }

// MediaType implements Reader.
func (r memReader) MediaType() string { return r.mediaType }

// Open implements Store.
func (m *Memory) Open(_ context.Context, key string) (Reader, error) {
	e, err := m.get("open", key)
	if err != nil {
		return nil, err
	}
	return memReader{Reader: bytes.NewReader(e.data), mediaType: e.mediaType}, nil
}

// Create implements Store.
func (m *Memory) Create(_ context.Context, key string, opts Options) (Writer, error) {
	if !ValidKey(key) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidKey, key)
	}
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("cachestore: create %s: %w", key, err)
	}
	return &memWriter{m: m, key: key, opts: opts}, nil
}

// Delete implements Deleter.
func (m *Memory) Delete(_ context.Context, key string) error {
	if !ValidKey(key) {
		return fmt.Errorf("%w: %q", ErrInvalidKey, key)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.entries[key]; !ok {
		return fmt.Errorf("cachestore: delete %s: %w", key, ErrNotFound)
	}
	delete(m.entries, key)
	return nil
}

// memWriter buffers an entry until Commit. It is meant for one goroutine at
// a time.
type memWriter struct {
	m    *Memory
	key  string
	opts Options
	buf  bytes.Buffer
	done bool // committed or discarded
}

// Write implements io.Writer.
func (w *memWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, errWriterDone
	}
	return w.buf.Write(p)
}

// Commit implements Writer.
func (w *memWriter) Commit(ctx context.Context, dg digest.Digest) error {
	if w.done {
		return errWriterDone
	}
	w.done = true // a failed Commit discards, like Cancel
	data := w.buf.Bytes()
	if err := w.verify(ctx, data, dg); err != nil {
		return fmt.Errorf("cachestore: commit %s: %w", w.key, err)
	}
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	if _, ok := w.m.entries[w.key]; ok && w.opts.Kind == Content {
		return nil
	}
	w.m.entries[w.key] = memEntry{data: data, mediaType: w.opts.MediaType, modTime: time.Now()}
	return nil
}

// verify checks that data hashes to dg.
func (w *memWriter) verify(ctx context.Context, data []byte, dg digest.Digest) error {
	if err := dg.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if got := dg.Algorithm().FromBytes(data); got != dg {
		return fmt.Errorf("%w: got %s, want %s", ErrDigestMismatch, got, dg)
	}
	return nil
}

// Cancel implements Writer.
func (w *memWriter) Cancel() error {
	if w.done {
		return nil
	}
	w.done = true
	w.buf = bytes.Buffer{}
	return nil
}
