package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// hotManifestMax is the largest body kept in the in-memory LRU. Typical
// manifests and indexes are a few KiB; the bound keeps the LRU's memory
// below hotManifests × hotManifestMax.
const (
	hotManifests   = 512
	hotTags        = 4096
	hotManifestMax = 64 << 10
	maxRecordSize  = 64 << 10
)

// manifestCache keeps manifests by digest (immutable, so also in an LRU)
// and tag records, on top of the store.
type manifestCache struct {
	store cachestore.Store
	hot   *lru.Cache[digest.Digest, *cachedManifest]
	// tags mirrors recently used tag records. Replicas sharing one store
	// may hold older copies than the store; the worst that does is one
	// extra revalidation, or a tag served up to one TTL late.
	tags *lru.Cache[string, tagRecord]
	// heads are tag records waiting for their manifest (see headTags).
	heads *headTags
}

func newManifestCache(store cachestore.Store) *manifestCache {
	hot, _ := lru.New[digest.Digest, *cachedManifest](hotManifests)
	tags, _ := lru.New[string, tagRecord](hotTags)
	return &manifestCache{store: store, hot: hot, tags: tags, heads: newHeadTags()}
}

// manifestMeta is the record beside a manifest body in which releases
// before the store kept media types stored the body's Content-Type
// (cachestore.ManifestMetaKey). It is read for manifest entries that carry
// no media type, so that a cache written by such a release still serves.
type manifestMeta struct {
	ContentType string `json:"contentType"`
}

// errNoMediaType is load's error for a manifest body without a media type
// of its own or a record of it beside it: one that an older release wrote
// and then lost the record of (it crashed between the two writes).
var errNoMediaType = errors.New("manifest entry without a media type")

// tagRecord says which manifest a tag named, for one Accept header, and
// when upstream last confirmed it.
type tagRecord struct {
	Registry   string        `json:"registry"`
	Repository string        `json:"repository"`
	Tag        string        `json:"tag"`
	Accept     string        `json:"accept"`
	Query      string        `json:"query,omitempty"`
	Digest     digest.Digest `json:"digest"`
	// MediaType is what upstream said the manifest is in this repository.
	MediaType string `json:"mediaType,omitempty"`
	// Open says the repository was open (see access) when the record was
	// validated, so that after a restart its clients can still be served
	// while upstream is down.
	Open      bool      `json:"open,omitempty"`
	Validated time.Time `json:"validated"`
	// Expires is Validated plus the tag's TTL under the rules in force when
	// it was written (see Proxy.tagTTL), for `cache ls` to show: equal to
	// Validated for a TTL of zero, zero in records written before TTL
	// rules. The proxy itself goes by the rules in force now.
	Expires time.Time `json:"expires,omitzero"`
}

// load returns the manifest with digest d, or an error wrapping
// cachestore.ErrNotFound. A manifest is one entry, body and media type,
// read at once; one that an older release wrote without its type has the
// type in a record beside it.
func (c *manifestCache) load(ctx context.Context, d digest.Digest) (*cachedManifest, error) {
	if m, ok := c.hot.Get(d); ok {
		return m, nil
	}
	body, mediaType, err := c.read(ctx, cachestore.ManifestKey(d), maxManifestSize)
	if err != nil {
		return nil, err
	}
	if mediaType == "" {
		var meta manifestMeta
		if err := c.readJSON(ctx, cachestore.ManifestMetaKey(d), &meta); err != nil {
			return nil, fmt.Errorf("%s: %w: %w", d, errNoMediaType, err)
		}
		mediaType = meta.ContentType
	}
	m := &cachedManifest{Body: body, ContentType: mediaType, Digest: d}
	c.remember(m)
	return m, nil
}

func (c *manifestCache) remember(m *cachedManifest) {
	if len(m.Body) <= hotManifestMax {
		c.hot.Add(m.Digest, m)
	}
}

// save stores a verified manifest with its media type, as one Content
// entry.
//
// A manifest already cached is left as it is: its bytes are the same, and
// the media type stored with them stays the one first seen, so that a
// second repository serving the same bytes under another type cannot
// change what the first one's clients get. (The store keeps the first
// commit of a Content entry anyway, as replicas sharing it race.)
//
// A body that an older release stored without its record stays too, since
// its entry is never replaced: the record is written beside it instead.
func (c *manifestCache) save(ctx context.Context, m *cachedManifest) error {
	_, err := c.load(ctx, m.Digest)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errNoMediaType):
		meta, _ := json.Marshal(manifestMeta{ContentType: m.ContentType})
		err = c.write(ctx, cachestore.ManifestMetaKey(m.Digest), cachestore.Options{Kind: cachestore.Record}, meta, digest.FromBytes(meta))
	default:
		opts := cachestore.Options{Kind: cachestore.Content, MediaType: m.ContentType}
		err = c.write(ctx, cachestore.ManifestKey(m.Digest), opts, m.Body, m.Digest)
	}
	if err != nil {
		return err
	}
	c.remember(m)
	return nil
}

// loadTag returns a tag record and the manifest it names.
func (c *manifestCache) loadTag(ctx context.Context, key string) (tagRecord, *cachedManifest, error) {
	rec, ok := c.tags.Get(key)
	if !ok {
		var err error
		if rec, err = c.readTag(ctx, key); err != nil {
			return rec, nil, err
		}
		c.tags.Add(key, rec)
	}
	m, err := c.load(ctx, rec.Digest)
	return rec, m, err
}

// readTag reads a tag record from the store. (Apart from loadTag, so that
// a record found in the LRU is not copied to the heap for decoding.)
func (c *manifestCache) readTag(ctx context.Context, key string) (tagRecord, error) {
	var rec tagRecord
	if err := c.readJSON(ctx, key, &rec); err != nil {
		return rec, err
	}
	if rec.Digest.Validate() != nil {
		return rec, fmt.Errorf("tag record %s: bad digest", key)
	}
	return rec, nil
}

func (c *manifestCache) saveTag(ctx context.Context, key string, rec tagRecord) error {
	b, _ := json.Marshal(rec)
	if err := c.write(ctx, key, cachestore.Options{Kind: cachestore.Record}, b, digest.FromBytes(b)); err != nil {
		return err
	}
	c.tags.Add(key, rec)
	return nil
}

func (c *manifestCache) write(ctx context.Context, key string, opts cachestore.Options, b []byte, d digest.Digest) error {
	w, err := c.store.Create(ctx, key, opts)
	if err != nil {
		return err
	}
	defer w.Cancel()
	if _, err := w.Write(b); err != nil {
		return err
	}
	return w.Commit(ctx, d)
}

// read returns the entry under key, and its media type.
func (c *manifestCache) read(ctx context.Context, key string, limit int64) ([]byte, string, error) {
	rd, err := c.store.Open(ctx, key)
	if err != nil {
		return nil, "", err
	}
	defer rd.Close()
	if rd.Size() > limit {
		return nil, "", fmt.Errorf("%s: %d bytes, more than %d", key, rd.Size(), limit)
	}
	b := make([]byte, rd.Size())
	if _, err := io.ReadFull(rd, b); err != nil {
		return nil, "", fmt.Errorf("read %s: %w", key, err)
	}
	return b, rd.MediaType(), nil
}

func (c *manifestCache) readJSON(ctx context.Context, key string, v any) error {
	b, _, err := c.read(ctx, key, maxRecordSize)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", key, err)
	}
	return nil
}

// tagQuery is what selects a tag record: the repository, named as
// canonicalRepo does, the tag, and the client's Accept and query,
// normalized (see tagRecordKey).
type tagQuery struct{ registry, repo, tag, accept, query string }

func (q tagQuery) key() string { return tagRecordKey(q.registry, q.repo, q.tag, q.accept, q.query) }

// tagRecordKey names the record of (registry, repository, tag, Accept,
// query). Everything that can select a different answer upstream is part
// of the key: one tag answers with an index or a single manifest depending
// on what the client accepts, and a query string (a mirror's ?ns=) may
// name another registry altogether.
func tagRecordKey(registry, repo, tag, accept, query string) string {
	var stack [512]byte // the whole key, for most requests, without a heap copy
	b := stack[:0]
	for _, s := range []string{registry, repo, tag, accept} {
		b = append(append(b, s...), '\n')
	}
	sum := sha256.Sum256(append(b, query...))
	return cachestore.TagKey(hex.EncodeToString(sum[:]))
}

// normalizeQuery reduces a query string to its parameters sorted by key,
// so that the same parameters in another order share a record.
func normalizeQuery(q url.Values) string {
	if len(q) == 0 {
		return ""
	}
	return q.Encode()
}

// normalizeAccept reduces Accept headers to a sorted set of media types,
// so that clients listing the same types in another order or with other
// q-values share records.
func normalizeAccept(h http.Header) string {
	var stack [8]string
	types := stack[:0]
	for _, v := range h.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			mt, _, _ := strings.Cut(part, ";")
			if mt = strings.ToLower(strings.TrimSpace(mt)); mt != "" {
				types = append(types, mt)
			}
		}
	}
	slices.Sort(types)
	return strings.Join(slices.Compact(types), ",")
}
