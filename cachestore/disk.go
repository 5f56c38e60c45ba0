package cachestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	// go-digest verifies sha384 and sha512 digests through crypto.Hash,
	// which only knows the algorithms whose packages are linked in.
	_ "crypto/sha512"

	"github.com/opencontainers/go-digest"
	"github.com/peterbourgon/diskv/v3"
)

// spoolName is the directory under the root that holds uncommitted files.
// Keys whose first component is spoolName are refused, because their entries
// would land among the spool files and be swept away by NewDisk.
const spoolName = "tmp"

// Disk is a Store on the local filesystem. An entry with key
// "blobs/sha256/abcd…" lives at root/blobs/sha256/ab/abcd…: every key
// component but the last is a directory, and the last is fanned out by its
// first two characters so that no directory holds millions of files.
// Uncommitted files live in root/tmp, which is on the same filesystem so
// that committing is a rename.
//
// An entry with a media type lives in the same directory at abcd…~typed
// (typedSuffix): one file, committed by one rename, whose first line is the
// media type and whose body follows. No key names such a file, since '~' is
// outside the key grammar, and the file an entry is in says which format it
// has: the bytes of an untyped entry (every blob, and everything that
// releases before media types wrote) are never parsed. Open looks for the
// untyped file first, so a blob hit costs one open.
//
// Disk also implements FileImporter and Deleter. Keys under "tmp/" are
// reserved and refused with ErrInvalidKey. One Disk should own a root: a
// second one would sweep the first one's uncommitted files.
type Disk struct {
	root  string // absolute and clean
	spool string // root/tmp
	// dv does only the final step of a commit (mkdir, rename) and Delete,
	// under its store-wide lock so that a Delete pruning empty directories
	// never races a commit creating them. Data never flows through it:
	// its WriteStream holds that lock for a whole copy, and its ReadStream
	// leaks the file of a reader that stops before EOF.
	dv *diskv.Diskv
	// fsync flushes a file or directory to stable storage: (*os.File).Sync,
	// which tests replace to see when commits sync, or to stop one there as
	// a crash would.
	fsync func(*os.File) error
	// obs learns of commits and reads (see Observe); nil means none.
	obs atomic.Pointer[observerBox]
	// keys serializes a commit of a key with DeleteIf of that key.
	keys keyLocks
}

var (
	_ Store        = (*Disk)(nil)
	_ FileImporter = (*Disk)(nil)
	_ Deleter      = (*Disk)(nil)
)

// NewDisk opens (creating if needed) a disk store rooted at root. Files left
// in root/tmp by an earlier process were never committed, so they are removed.
func NewDisk(root string) (*Disk, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("cachestore: disk root %q: %w", root, err)
	}
	spool := filepath.Join(abs, spoolName)
	if err := os.MkdirAll(spool, 0o755); err != nil {
		return nil, fmt.Errorf("cachestore: create disk root: %w", err)
	}
	if err := sweep(spool); err != nil {
		return nil, err
	}
	return newDisk(abs, spool), nil
}

// newDisk returns the Disk of an existing root and spool directory.
func newDisk(abs, spool string) *Disk {
	dv := diskv.New(diskv.Options{
		BasePath:          abs,
		TempDir:           spool,
		AdvancedTransform: toPathKey,
		InverseTransform:  fromPathKey,
		CacheSizeMax:      0, // the OS page cache already keeps hot files
		PathPerm:          0o755,
		FilePerm:          0o644,
	})
	return &Disk{root: abs, spool: spool, dv: dv, fsync: (*os.File).Sync}
}

// sweep removes everything in dir.
func sweep(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("cachestore: sweep spool: %w", err)
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cachestore: sweep spool: %w", err)
	}
	return nil
}

// typedSuffix ends the file name of an entry committed with a media type
// (see Disk).
const typedSuffix = "~typed"

// maxTypeLine bounds the first line of a typed entry's file: the media type
// and its newline.
const maxTypeLine = MaxMediaType + 1

// layout splits a valid key into the directories and file name of its entry:
// all components but the last, then the last one's first two characters
// (fewer if it is shorter), then the last component as the file name. It
// also lays out a key with typedSuffix, as the typed file beside the key's.
func layout(key string) (dirs []string, name string) {
	parts := strings.Split(key, "/")
	name = parts[len(parts)-1]
	base := strings.TrimSuffix(name, typedSuffix)
	fan := base[:min(2, len(base))]
	return append(parts[:len(parts)-1:len(parts)-1], fan), name
}

// toPathKey is layout as a diskv AdvancedTransform.
func toPathKey(key string) *diskv.PathKey {
	dirs, name := layout(key)
	return &diskv.PathKey{Path: dirs, FileName: name}
}

// fromPathKey inverts toPathKey by dropping the fan-out directory.
func fromPathKey(pk *diskv.PathKey) string {
	if len(pk.Path) == 0 {
		return pk.FileName
	}
	dirs := pk.Path[: len(pk.Path)-1 : len(pk.Path)-1]
	return strings.Join(append(dirs, pk.FileName), "/")
}

// path returns the file of key's entry, or ErrInvalidKey. It touches no
// file, so every method calls it before anything else.
func (d *Disk) path(key string) (string, error) {
	if !ValidKey(key) || strings.HasPrefix(key, spoolName+"/") {
		return "", fmt.Errorf("%w: %q", ErrInvalidKey, key)
	}
	dirs, name := layout(key)
	rel := filepath.Join(filepath.Join(dirs...), name)
	// ValidKey already rules out "..", absolute and empty components; this
	// second check keeps a future change to the grammar from letting a key
	// escape the root or reach into the spool.
	if !filepath.IsLocal(rel) || strings.HasPrefix(rel, spoolName+string(filepath.Separator)) {
		return "", fmt.Errorf("%w: %q", ErrInvalidKey, key)
	}
	return filepath.Join(d.root, rel), nil
}

// isNotFound reports whether err means that no file is at a path, including
// the case where a component of the path is a file (ENOTDIR).
func isNotFound(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// statErr turns a failed stat or open of key's file into the store's error.
func statErr(op, key string, err error) error {
	if isNotFound(err) {
		return fmt.Errorf("cachestore: %s %s: %w", op, key, ErrNotFound)
	}
	return fmt.Errorf("cachestore: %s %s: %w", op, key, err)
}

// fileReader is a committed untyped entry opened directly, so that Seek and
// ReadAt are system calls rather than copies, and a copy to a socket may
// splice.
type fileReader struct {
	*os.File
	size int64
}

// Size implements Reader with the size the file had when opened. Entries are
// replaced by rename, never rewritten, so it cannot change under the reader.
func (r fileReader) Size() int64 { return r.size }

// MediaType implements Reader: an untyped entry has none.
func (fileReader) MediaType() string { return "" }

// typedReader is a committed typed entry: its file from the end of the
// media type line.
type typedReader struct {
	*io.SectionReader
	f         *os.File
	mediaType string
}

func (r *typedReader) Close() error { return r.f.Close() }

// MediaType implements Reader.
func (r *typedReader) MediaType() string { return r.mediaType }

// Open implements Store: the untyped file of key, else its typed one.
func (d *Disk) Open(_ context.Context, key string) (Reader, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, err
	}
	r, err := openFile(p, false)
	if isNotFound(err) {
		r, err = openFile(p+typedSuffix, true)
	}
	if err != nil {
		return nil, statErr("open", key, err)
	}
	d.opened(key)
	return r, nil
}

// openFile opens an entry's file. A directory there (made for longer keys)
// is not an entry.
func openFile(p string, typed bool) (Reader, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fs.ErrNotExist
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	if !typed {
		return fileReader{File: f, size: fi.Size()}, nil
	}
	mt, n, err := readTypeLine(f, fi.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	return &typedReader{SectionReader: io.NewSectionReader(f, n, fi.Size()-n), f: f, mediaType: mt}, nil
}

// readTypeLine reads the media type line at the start of a typed entry's
// file of size bytes, and returns the type and the line's length.
func readTypeLine(f *os.File, size int64) (string, int64, error) {
	buf := make([]byte, min(size, maxTypeLine))
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return "", 0, err
	}
	i := bytes.IndexByte(buf, '\n')
	if i < 0 {
		return "", 0, fmt.Errorf("%s: no media type line", f.Name())
	}
	return string(buf[:i]), int64(i + 1), nil
}

// regularFile returns the file at p if it is a regular file, else an error
// for which isNotFound holds if there is none.
func regularFile(p string) (fs.FileInfo, error) {
	fi, err := os.Lstat(p)
	if err == nil && !fi.Mode().IsRegular() {
		err = fs.ErrNotExist
	}
	return fi, err
}

// SpoolDir implements FileImporter.
func (d *Disk) SpoolDir() string { return d.spool }

// ImportFile implements FileImporter. A file of the wrong size is refused
// with an error wrapping ErrDigestMismatch and left where it is. The file
// is synced before it is renamed, as Commit syncs its own (see install),
// whether or not the caller synced it already.
func (d *Disk) ImportFile(ctx context.Context, key, path string, size int64, dg digest.Digest) error {
	if _, err := d.path(key); err != nil {
		return err
	}
	if err := dg.Validate(); err != nil {
		return fmt.Errorf("cachestore: import %s: %w", key, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("cachestore: import %s: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("cachestore: import %s: %s is not a regular file", key, path)
	}
	if fi.Size() != size {
		return fmt.Errorf("cachestore: import %s: %s has %d bytes, want %d: %w",
			key, path, fi.Size(), size, ErrDigestMismatch)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cachestore: import %s: %w", key, err)
	}
	if err := d.syncPath(path); err != nil {
		return fmt.Errorf("cachestore: import %s: sync: %w", key, err)
	}
	return d.install(key, path, Content, false)
}

// install moves the file at src, already synced, to key's place (its
// typed file if typed), and then syncs the directories on the way to it.
// For a Content entry that key has already, it removes src instead (see
// commitFile). The steps:
//  1. src's data is on disk before its new name can be (the caller synced
//     it), so a crash never leaves a visible entry of missing bytes: a
//     journal may commit the rename before the data;
//  2. diskv creates the directories the key needs and renames under its
//     lock, so a reader sees the old entry or the new one, never a partial
//     file;
//  3. the directory that holds the entry is synced, so that the rename, and
//     with it an entry clients were told is cached, survives a power cut;
//     so are its parents up to the root, each of which may hold a directory
//     this commit, or a concurrent one, just created. Syncing a directory
//     that did not change costs little.
//
// An error from step 3 comes after the rename: the entry is visible and
// whole, but may not survive a power cut.
func (d *Disk) install(key, src string, kind Kind, typed bool) error {
	installed, err := d.commitFile(src, key, kind, typed)
	if err != nil {
		return fmt.Errorf("cachestore: commit %s: %w", key, err)
	}
	if !installed {
		return nil
	}
	p, _ := d.path(key) // install's callers checked the key
	for dir := filepath.Dir(p); ; dir = filepath.Dir(dir) {
		if err := d.syncDir(dir); err != nil {
			return fmt.Errorf("cachestore: commit %s: %w", key, err)
		}
		if dir == d.root || dir == filepath.Dir(dir) {
			return nil
		}
	}
}

// syncPath flushes the file or directory at path to stable storage.
func (d *Disk) syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return errors.Join(d.fsync(f), f.Close())
}

// syncDir is syncPath for a directory. Some filesystems (network and FUSE
// ones) cannot sync a directory and say so with EINVAL; their renames are
// as durable as they make them.
func (d *Disk) syncDir(dir string) error {
	if err := d.syncPath(dir); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

// Delete implements Deleter: it removes key's file, or files, and prunes
// the directories that leaves empty. Readers that already opened the entry
// keep reading it.
func (d *Disk) Delete(_ context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	found := false
	for _, f := range [...]struct{ name, path string }{{key, p}, {key + typedSuffix, p + typedSuffix}} {
		_, err := regularFile(f.path)
		if err == nil {
			err = d.dv.Erase(f.name)
		}
		switch {
		case err == nil:
			found = true
		case !isNotFound(err):
			return statErr("delete", key, err)
		}
	}
	if !found {
		return statErr("delete", key, fs.ErrNotExist)
	}
	return nil
}
