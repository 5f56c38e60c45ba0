// Package azure is a cachestore.Store in one Azure Blob Storage container,
// which several regproxy replicas may share. It owns the mapping of entries
// to block blobs: how a writer stages blocks while bytes arrive and commits
// them only once the digest verifies, how a reader downloads an entry in as
// few requests as its caller's reads allow, and how the container is checked
// at start. It does not own fills, spooling or eviction, and knows nothing
// of registries.
//
// Each key is the name of one block blob. Content entries
// (cachestore.Content) are committed with If-None-Match: *, so that the first
// commit wins and a second one of the same content is a no-op, however many
// replicas race. Records are overwritten by each commit (last write wins).
// The kind is kept in the blob's metadata, so that a reader can tell a
// local tier whether it may keep a copy (see cachestore.KindReader). Media
// types are kept as the blob's Content-Type, so a manifest and its
// type come back in one download; a blob without one reads back as having
// none, and so does one committed with application/octet-stream, which is
// what Azure reports for a blob stored without a Content-Type.
package azure

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/regproxy/regproxy/cachestore"
)

// Store is a cachestore.Store (and Deleter, Stater, Walker and
// CondDeleter) in one Azure container. It is safe for concurrent use; call
// Close when done with it.
type Store struct {
	c     *container.Client
	where string // the container URL without its query (which may hold a SAS), for errors
	hc    *http.Client
	cfg   Config // with defaults applied
}

var (
	_ cachestore.Store   = (*Store)(nil)
	_ cachestore.Deleter = (*Store)(nil)
	_ cachestore.Stater  = (*Store)(nil)
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

// Stat implements cachestore.Stater with one HEAD request. An entry's last
// use is when it was last committed, or last accessed where the account
// tracks access (see lastUse).
func (s *Store) Stat(ctx context.Context, key string) (cachestore.Entry, error) {
	b, err := s.blob(key)
	if err != nil {
		return cachestore.Entry{}, err
	}
	p, err := b.GetProperties(ctx, nil)
	if err != nil {
		return cachestore.Entry{}, opErr("stat", key, err)
	}
	e := cachestore.Entry{Key: key}
	if p.ContentLength != nil {
		e.Size = *p.ContentLength
	}
	e.LastUse = lastUse(p.LastModified, p.LastAccessed)
	return e, nil
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

// kindMetadata is the name of the blob metadata that holds the entry's
// kind: "content" or "record".
const kindMetadata = "kind"

// kindOf reads the entry's kind from a blob's metadata, or 0 for a blob that
// has none (committed by an earlier release). The SDK gives the names as
// the response's headers spell them.
func kindOf(metadata map[string]*string) cachestore.Kind {
	for name, v := range metadata {
		if !strings.EqualFold(name, kindMetadata) || v == nil {
			continue
		}
		for _, k := range []cachestore.Kind{cachestore.Content, cachestore.Record} {
			if *v == k.String() {
				return k
			}
		}
	}
	return 0
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
