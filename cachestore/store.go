// Package cachestore owns where cached bytes live: content-addressed blobs,
// manifests and small metadata records, on local disk (and later in Azure
// Blob Storage). It knows nothing of HTTP, registries or fills: callers hand
// it bytes they want kept and a digest the bytes must match.
package cachestore

import (
	"context"
	"errors"
	"io"
	"regexp"
	"time"

	"github.com/opencontainers/go-digest"
)

// ErrNotFound is returned by Stat and Open when no committed entry has the key.
var ErrNotFound = errors.New("cachestore: not found")

// ErrDigestMismatch is returned by Commit when the written bytes do not match
// the digest they were committed under. Nothing is stored in that case.
var ErrDigestMismatch = errors.New("cachestore: digest mismatch")

// ErrInvalidKey is returned for keys outside the key grammar (see ValidKey).
var ErrInvalidKey = errors.New("cachestore: invalid key")

// Info describes a committed entry.
type Info struct {
	Size    int64
	ModTime time.Time
}

// Reader is a committed entry opened for reading. It is seekable so that
// Range requests and HEADs cost no copy.
type Reader interface {
	io.ReadSeekCloser
	io.ReaderAt
	Size() int64
}

// Writer receives the bytes of a new entry. The entry stays invisible until
// Commit succeeds; Cancel (or a failed Commit) discards it. Calling Cancel
// after Commit is a no-op, so callers may always defer Cancel.
type Writer interface {
	io.Writer
	// Commit verifies that the bytes written match d and then makes them
	// visible under the writer's key atomically.
	Commit(ctx context.Context, d digest.Digest) error
	// Cancel discards what was written.
	Cancel() error
}

// Store is the storage interface every backend implements. Keys are
// slash-separated paths in the grammar of ValidKey; the store maps them to
// its own layout. Implementations are safe for concurrent use.
type Store interface {
	// Stat reports a committed entry, or ErrNotFound.
	Stat(ctx context.Context, key string) (Info, error)
	// Open opens a committed entry, or returns ErrNotFound.
	Open(ctx context.Context, key string) (Reader, error)
	// Create starts a new entry under key. Concurrent writers of one key are
	// allowed; the last successful Commit wins, and since keys name content
	// (or small records) either winner is correct.
	Create(ctx context.Context, key string) (Writer, error)
}

// FileImporter is implemented by stores that can adopt a local file whose
// digest the caller has already verified, without copying it (the disk store
// renames it into place). Fills, which hash while they stream, use it to
// avoid reading a multi-gigabyte spool file a second time.
type FileImporter interface {
	// SpoolDir is a directory on the store's own filesystem where callers
	// may create files they will later import; a file there is imported by
	// a rename.
	SpoolDir() string
	// ImportFile moves path into the store under key. The caller guarantees
	// that the file's content matches d; the store checks its size only.
	ImportFile(ctx context.Context, key, path string, size int64, d digest.Digest) error
}

// Deleter is implemented by stores that can remove entries (eviction, the
// cache CLI).
type Deleter interface {
	Delete(ctx context.Context, key string) error
}

var keyRE = regexp.MustCompile(`^[a-z0-9]+(/[a-z0-9][a-z0-9._-]*)*$`)

// ValidKey reports whether key is in the key grammar: lowercase
// slash-separated components of [a-z0-9._-], none empty, none starting with a
// dot (so no "." or ".." and no hidden files), at most 512 bytes.
func ValidKey(key string) bool {
	return len(key) <= 512 && keyRE.MatchString(key)
}

// BlobKey is the key of the blob with digest d. Blobs are shared by every
// repository and registry: the digest alone names them.
func BlobKey(d digest.Digest) string {
	return "blobs/" + d.Algorithm().String() + "/" + d.Encoded()
}

// ManifestKey is the key of the manifest body with digest d.
func ManifestKey(d digest.Digest) string {
	return "manifests/" + d.Algorithm().String() + "/" + d.Encoded()
}

// ManifestMetaKey is the key of the small record that keeps the response
// headers (media type) of the manifest with digest d.
func ManifestMetaKey(d digest.Digest) string {
	return ManifestKey(d) + ".meta"
}

// TagKey is the key of a tag record. id is an opaque lowercase hex name that
// the caller derives from (registry, repository, tag, Accept).
func TagKey(id string) string {
	return "tags/" + id
}
