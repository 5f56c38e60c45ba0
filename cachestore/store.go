// Package cachestore owns where cached bytes live: content-addressed blobs
// and manifests, and small mutable records, on local disk (Disk), in memory
// for tests (Memory), and through the same interface in Azure Blob Storage
// (cachestore/azure). It knows nothing of HTTP, registries or fills:
// callers hand it bytes they want kept, the kind of entry they are, and a
// digest the bytes must match.
package cachestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"

	"github.com/opencontainers/go-digest"
)

// ErrNotFound is returned by Open (and the extensions) when no committed
// entry has the key.
var ErrNotFound = errors.New("cachestore: not found")

// ErrDigestMismatch is returned by Commit when the written bytes do not match
// the digest they were committed under. Nothing is stored in that case.
var ErrDigestMismatch = errors.New("cachestore: digest mismatch")

// ErrInvalidKey is returned for keys outside the key grammar (see ValidKey).
var ErrInvalidKey = errors.New("cachestore: invalid key")

// ErrInvalidOptions is returned by Create for Options that Validate refuses.
var ErrInvalidOptions = errors.New("cachestore: invalid options")

// Kind says how the commits of one key relate to each other. The caller
// says which kind an entry is when it creates it; a store never guesses it
// from the key.
type Kind uint8

const (
	// Content entries are named by their content (blobs and manifests,
	// keyed by digest), so every commit of a key holds the same bytes: the
	// store keeps the first, and a later commit of the key is a no-op that
	// succeeds, leaving the entry (and its media type) as it was. Replicas
	// that share a store and commit one key at once all succeed.
	Content Kind = iota + 1
	// Record entries are small and mutable (tag records): each commit
	// replaces the entry, media type included, and the last one wins.
	Record
)

func (k Kind) String() string {
	switch k {
	case Content:
		return "content"
	case Record:
		return "record"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Options describes a new entry to Create.
type Options struct {
	// Kind is required: the zero Kind is refused.
	Kind Kind
	// MediaType is kept with the entry, and Reader.MediaType returns it,
	// so that a manifest and its type are one entry read at once (on
	// Azure, the blob's Content-Type). "" means none. It is printable
	// ASCII of at most MaxMediaType bytes.
	MediaType string
}

// MaxMediaType bounds Options.MediaType.
const MaxMediaType = 255

// Validate reports whether o may be given to Create, wrapping
// ErrInvalidOptions if not. Every store calls it.
func (o Options) Validate() error {
	if o.Kind != Content && o.Kind != Record {
		return fmt.Errorf("%w: kind %v: want Content or Record", ErrInvalidOptions, o.Kind)
	}
	if len(o.MediaType) > MaxMediaType {
		return fmt.Errorf("%w: media type of %d bytes, more than %d", ErrInvalidOptions, len(o.MediaType), MaxMediaType)
	}
	for i := range len(o.MediaType) {
		if c := o.MediaType[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("%w: media type %q: not printable ASCII", ErrInvalidOptions, o.MediaType)
		}
	}
	return nil
}

// Reader is a committed entry opened for reading. It is seekable so that
// Range requests and HEADs cost no copy. Reading past the end reports
// io.EOF, as an *os.File does; seeking there is allowed.
type Reader interface {
	io.ReadSeekCloser
	io.ReaderAt
	// Size is the entry's size in bytes.
	Size() int64
	// MediaType is the media type the entry was committed with, or "".
	MediaType() string
}

// KindReader is implemented by the readers of stores that keep the kind of
// each entry with it (Azure, as the blob's metadata). Kind returns the kind
// the entry was committed as, or 0 if the store does not know it (an entry
// an earlier release wrote). A local tier keeps copies of Content entries
// only, since a Record may change under it.
type KindReader interface {
	Kind() Kind
}

// Writer receives the bytes of a new entry. The entry stays invisible until
// Commit succeeds; Cancel (or a failed Commit) discards it. Calling Cancel
// after Commit is a no-op, so callers may always defer Cancel.
type Writer interface {
	io.Writer
	// Commit verifies that the bytes written match d and then makes them
	// visible under the writer's key atomically: in place of the entry
	// there for a Record; for Content, only if the key has no entry yet
	// (else it succeeds and changes nothing).
	Commit(ctx context.Context, d digest.Digest) error
	// Cancel discards what was written.
	Cancel() error
}

// Store is the storage interface every backend implements. Keys are
// slash-separated paths in the grammar of ValidKey; the store maps them to
// its own layout, and learns from Options, not from the key, what kind of
// entry each is. Implementations are safe for concurrent use.
//
// What only some stores can do are the extensions: FileImporter and
// Deleter here, and what eviction needs (Walker, Stater, Toucher,
// CondDeleter, in lastuse.go).
type Store interface {
	// Open opens a committed entry, or returns ErrNotFound.
	Open(ctx context.Context, key string) (Reader, error)
	// Create starts a new entry under key. Concurrent writers of one key
	// are allowed; which commit counts depends on opts.Kind (see Kind).
	Create(ctx context.Context, key string, opts Options) (Writer, error)
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
	// ImportFile moves path into the store under key, as a Content entry
	// without a media type. The caller guarantees that the file's content
	// matches d; the store checks its size only. If key has an entry
	// already, the file is removed and the entry left as it is. A file
	// refused with an error stays where it is.
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

// ManifestMetaKey is the key of the record in which releases before the
// media type was kept with the entry stored the media type of the manifest
// with digest d, beside its body. Nothing writes one any more but the
// repair of a body whose record such a release lost; it is read for
// manifest entries that carry no media type.
func ManifestMetaKey(d digest.Digest) string {
	return ManifestKey(d) + ".meta"
}

// TagKey is the key of a tag record. id is an opaque lowercase hex name that
// the caller derives from (registry, repository, tag, Accept).
func TagKey(id string) string {
	return "tags/" + id
}
