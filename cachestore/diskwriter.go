package cachestore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/opencontainers/go-digest"
)

// errWriterDone is returned by Write and Commit on a writer that was already
// committed or discarded.
var errWriterDone = errors.New("cachestore: writer already committed or canceled")

// Create implements Store. The bytes go to a file in the spool directory and
// are hashed on the way, so that committing a sha256 digest (the only kind
// registries use in practice) reads nothing back. An entry with a media
// type starts its file with the type's line (see Disk).
func (d *Disk) Create(_ context.Context, key string, opts Options) (Writer, error) {
	if _, err := d.path(key); err != nil {
		return nil, err
	}
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("cachestore: create %s: %w", key, err)
	}
	f, err := os.CreateTemp(d.spool, "create-*")
	if err != nil {
		return nil, fmt.Errorf("cachestore: create %s: %w", key, err)
	}
	w := &diskWriter{disk: d, key: key, kind: opts.Kind, f: f, h: sha256.New()}
	if opts.MediaType != "" {
		w.typed = true
		w.off = int64(len(opts.MediaType)) + 1
		if _, err := f.WriteString(opts.MediaType + "\n"); err != nil {
			return nil, errors.Join(fmt.Errorf("cachestore: create %s: %w", key, err), discard(f))
		}
	}
	return w, nil
}

// diskWriter is a Writer backed by a spool file. Like an *os.File it is meant
// for one goroutine at a time.
type diskWriter struct {
	disk  *Disk
	key   string
	kind  Kind
	typed bool      // the file starts with a media type line
	off   int64     // where the body starts in the file: after that line
	f     *os.File  // the spool file; nil once committed or discarded
	h     hash.Hash // sha256 of the n bytes of body written so far
	n     int64
}

// Write implements io.Writer.
func (w *diskWriter) Write(p []byte) (int, error) {
	if w.f == nil {
		return 0, errWriterDone
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Commit implements Writer:
//  1. verify the bytes against dg (from the running hash if dg is sha256),
//  2. fsync, so that a crash cannot leave a visible entry whose data never
//     reached the disk (the rename may be journaled before the data),
//  3. rename the file into place and sync the directories that hold it
//     (see install), unless the entry is Content that the key has already:
//     the spool file then goes.
//
// Whatever fails, the spool file is removed and the writer is done.
func (w *diskWriter) Commit(ctx context.Context, dg digest.Digest) error {
	if w.f == nil {
		return errWriterDone
	}
	f := w.f
	w.f = nil // from here on a later Cancel has nothing to do
	if err := w.verify(ctx, f, dg); err != nil {
		return errors.Join(fmt.Errorf("cachestore: commit %s: %w", w.key, err), discard(f))
	}
	if err := w.disk.fsync(f); err != nil {
		return errors.Join(fmt.Errorf("cachestore: commit %s: %w", w.key, err), discard(f))
	}
	if err := f.Close(); err != nil {
		return errors.Join(fmt.Errorf("cachestore: commit %s: %w", w.key, err), os.Remove(f.Name()))
	}
	if err := w.disk.install(w.key, f.Name(), w.kind, w.typed); err != nil {
		return errors.Join(err, removeIfExists(f.Name()))
	}
	return nil
}

// verify checks that the bytes written hash to dg.
func (w *diskWriter) verify(ctx context.Context, f *os.File, dg digest.Digest) error {
	if err := dg.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if dg.Algorithm() == digest.SHA256 {
		if got := digest.NewDigest(digest.SHA256, w.h); got != dg {
			return fmt.Errorf("%w: got %s, want %s", ErrDigestMismatch, got, dg)
		}
		return nil
	}
	v := dg.Verifier()
	if _, err := io.Copy(v, ctxReader{ctx, io.NewSectionReader(f, w.off, w.n)}); err != nil {
		return err
	}
	if !v.Verified() {
		return fmt.Errorf("%w: content does not hash to %s", ErrDigestMismatch, dg)
	}
	return nil
}

// Cancel implements Writer.
func (w *diskWriter) Cancel() error {
	if w.f == nil {
		return nil
	}
	f := w.f
	w.f = nil
	return discard(f)
}

// discard closes and removes an open spool file.
func discard(f *os.File) error {
	return errors.Join(f.Close(), os.Remove(f.Name()))
}

// removeIfExists removes a spool file that a failed rename may or may not
// have consumed.
func removeIfExists(name string) error {
	if err := os.Remove(name); err != nil && !isNotFound(err) {
		return err
	}
	return nil
}

// ctxReader stops a long read when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
