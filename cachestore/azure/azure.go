// Package azure is a cachestore.Store in one Azure Blob Storage container,
// which several regproxy replicas may share. It owns the mapping of entries
// to block blobs: how a writer stages blocks while bytes arrive and commits
// them only once the digest verifies, how a reader downloads an entry in as
// few requests as its caller's reads allow, and how the container is checked
// at start. It does not own fills, spooling or eviction, and knows nothing
// of registries.
//
// Each key is the name of one block blob. Content-addressed keys (blobs/...
// and manifests/... except *.meta) are committed with If-None-Match: *, so
// that the first commit wins and a second one of the same content is a
// no-op. Every other key is a record, overwritten by each commit (last write
// wins). Media types are kept as the blob's Content-Type.
package azure

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// Store is a cachestore.Store (and Deleter) in one Azure container. Its
// writers are cachestore.TypedWriters and its readers cachestore.TypedReaders.
// It is safe for concurrent use; call Close when done with it.
type Store struct {
	c     *container.Client
	where string // the container URL without its query (which may hold a SAS), for errors
	hc    *http.Client
	cfg   Config // with defaults applied

	// blocks holds reusable buffers of cfg.BlockSize bytes, so that
	// writing a large entry does not allocate a buffer per block.
	blocks sync.Pool
}

var (
	_ cachestore.Store   = (*Store)(nil)
	_ cachestore.Deleter = (*Store)(nil)
)

// checkTimeout bounds New's check of the container, whatever ctx allows.
const checkTimeout = 30 * time.Second

// New connects to the container that cfg names and checks it: it reads the
// container's properties, or creates the container if it is missing. A
// wrong key, an unreachable endpoint or a container that is missing and
// cannot be created is reported as one error whose message fits one line;
// a Config refused before any request, as a *ConfigError.
func New(ctx context.Context, cfg Config) (*Store, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	hc := newHTTPClient(cfg)
	c, err := cfg.client(hc)
	if err != nil {
		hc.CloseIdleConnections()
		if _, ok := errors.AsType[*ConfigError](err); ok {
			return nil, err
		}
		return nil, fmt.Errorf("cachestore/azure: %w", short(err))
	}
	s := &Store{c: c, where: redactURL(c.URL()), hc: hc, cfg: cfg}
	s.blocks.New = func() any { b := make([]byte, cfg.BlockSize); return &b }
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// check makes sure that the container exists, creating it if needed.
func (s *Store) check(ctx context.Context) error {
	_, err := s.c.GetProperties(ctx, nil)
	if err == nil {
		return nil
	}
	if !bloberror.HasCode(err, bloberror.ContainerNotFound) {
		return s.checkErr(err)
	}
	_, err = s.c.Create(ctx, nil)
	// Another replica may have created it since GetProperties.
	if err == nil || bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
		return nil
	}
	if isAuthErr(err) || isTransportErr(err) || errors.Is(err, context.DeadlineExceeded) {
		return s.checkErr(err)
	}
	return fmt.Errorf("cachestore/azure: container %s is missing and cannot be created: %w", s.where, short(err))
}

// checkErr turns an error of New's first request into its one-line message.
func (s *Store) checkErr(err error) error {
	switch {
	case isAuthErr(err):
		return fmt.Errorf("cachestore/azure: %s: authentication failed: check the account name and key, "+
			"the connection string or the credential: %w", s.where, short(err))
	case errors.Is(err, context.DeadlineExceeded), isTransportErr(err):
		return fmt.Errorf("cachestore/azure: %s: %w: %w", s.where, errUnreachable, short(err))
	}
	return fmt.Errorf("cachestore/azure: check container %s: %w", s.where, short(err))
}

// Close releases the store's idle connections. Readers and writers still
// open keep working; Close only stops keeping connections for reuse.
func (s *Store) Close() error {
	s.hc.CloseIdleConnections()
	return nil
}

// blob returns the client of key's blob, or an error wrapping
// cachestore.ErrInvalidKey. It makes no request.
func (s *Store) blob(key string) (*blob.Client, error) {
	if !cachestore.ValidKey(key) {
		return nil, fmt.Errorf("%w: %q", cachestore.ErrInvalidKey, key)
	}
	return s.c.NewBlobClient(key), nil
}

// Stat implements cachestore.Store with one HEAD request.
func (s *Store) Stat(ctx context.Context, key string) (cachestore.Info, error) {
	b, err := s.blob(key)
	if err != nil {
		return cachestore.Info{}, err
	}
	p, err := b.GetProperties(ctx, nil)
	if err != nil {
		return cachestore.Info{}, opErr("stat", key, err)
	}
	info := cachestore.Info{}
	if p.ContentLength != nil {
		info.Size = *p.ContentLength
	}
	if p.LastModified != nil {
		info.ModTime = *p.LastModified
	}
	return info, nil
}

// Delete implements cachestore.Deleter. Readers that already opened the
// entry fail on their next download, since the entry they read is gone.
func (s *Store) Delete(ctx context.Context, key string) error {
	b, err := s.blob(key)
	if err != nil {
		return err
	}
	if _, err := b.Delete(ctx, nil); err != nil {
		return opErr("delete", key, err)
	}
	return nil
}

// contentAddressed reports whether key names immutable content, and if so
// the digest algorithm its second component names (which may be
// unavailable). Such keys are "blobs/ALG/HEX" and "manifests/ALG/HEX", the
// keys of cachestore.BlobKey and cachestore.ManifestKey; ManifestMetaKey's
// "manifests/ALG/HEX.meta" is a record.
func contentAddressed(key string) (digest.Algorithm, bool) {
	parts := strings.Split(key, "/")
	if len(parts) != 3 || parts[0] != "blobs" && parts[0] != "manifests" {
		return "", false
	}
	if strings.Contains(parts[2], ".") {
		return "", false
	}
	return digest.Algorithm(parts[1]), true
}

// mediaTypeOf maps a blob's Content-Type back to the entry's media type.
// Azure reports application/octet-stream for a blob stored without one, so
// that type reads back as "" (no media type) too.
func mediaTypeOf(contentType *string) string {
	if contentType == nil || *contentType == defaultContentType {
		return ""
	}
	return *contentType
}

// defaultContentType is the Content-Type Azure gives a blob stored without one.
const defaultContentType = "application/octet-stream"

// etagOf returns *e, or "" for nil.
func etagOf(e *azcore.ETag) azcore.ETag {
	if e == nil {
		return ""
	}
	return *e
}
