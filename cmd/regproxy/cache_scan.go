package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/proxy"
)

// A scan is what ls and rm know of the cache: one walk of the store, the
// tag records read, and (for ls) the manifests read, so that blobs can be
// put in the repositories whose tags lead to them. Blobs are never read.

// cachedTag is a tag record as the proxy writes it (tagRecord, in
// proxy/manifestcache.go), and the entry it is in.
type cachedTag struct {
	Registry   string        `json:"registry"`
	Repository string        `json:"repository"`
	Tag        string        `json:"tag"`
	Accept     string        `json:"accept"`
	Query      string        `json:"query"`
	Digest     digest.Digest `json:"digest"`
	MediaType  string        `json:"mediaType"`
	Validated  time.Time     `json:"validated"`
	Expires    time.Time     `json:"expires"`

	entry cachestore.Entry
}

// Name is the tag's name as people write it: docker.io/library/alpine:3.20.
func (t *cachedTag) Name() string { return proxy.TagName(t.Registry, t.Repository, t.Tag) }

// Repo is the name of the tag's repository: docker.io/library/alpine.
func (t *cachedTag) Repo() string { return repoName(t.Registry, t.Repository) }

// RepoAlias is Repo's other name, for Docker Hub (see proxy.TagNames); "".
func (t *cachedTag) RepoAlias() string {
	_, alias := proxy.TagNames(t.Registry, t.Repository, t.Tag)
	return strings.TrimSuffix(alias, ":"+t.Tag)
}

// ExpiresAt is when the record stops being served without asking upstream:
// its own expiry, which the TTL rules of the server that wrote it set, else
// (a record written before TTL rules) ttl after its validation.
func (t *cachedTag) ExpiresAt(ttl time.Duration) time.Time {
	if !t.Expires.IsZero() {
		return t.Expires
	}
	return t.Validated.Add(ttl)
}

// repoName names a repository as proxy.TagName names its tags.
func repoName(registry, repo string) string {
	return strings.TrimSuffix(proxy.TagName(registry, repo, "t"), ":t")
}

// cachedManifest is what a scan reads of a manifest: the manifests (of an
// index) and blobs (config and layers) it names.
type cachedManifest struct {
	children []digest.Digest
	blobs    []digest.Digest
}

// manifestRefs is the part of a manifest that names others: an image
// manifest's config and layers (and an artifact's blobs, a schema 1
// manifest's fsLayers), an index's manifests.
type manifestRefs struct {
	Config *struct {
		Digest digest.Digest `json:"digest"`
	} `json:"config"`
	Layers []struct {
		Digest digest.Digest `json:"digest"`
	} `json:"layers"`
	Blobs []struct {
		Digest digest.Digest `json:"digest"`
	} `json:"blobs"`
	FSLayers []struct {
		BlobSum digest.Digest `json:"blobSum"`
	} `json:"fsLayers"`
	Manifests []struct {
		Digest digest.Digest `json:"digest"`
	} `json:"manifests"`
}

// Bounds of what a scan reads: those of the proxy's records and manifests.
const (
	maxTagRecordRead = 64 << 10
	maxManifestRead  = 4 << 20
)

// scanParallel bounds the entries a scan reads at once: on Azure each is a
// request.
const scanParallel = 16

// cacheScan is one scan of a store.
type cacheScan struct {
	entries map[string]cachestore.Entry // every entry walked, by key
	tags    []*cachedTag                // the tag records that could be read
	// unreadable counts the tag records that could not be read or decoded.
	unreadable int
	// manifests are the manifests read, by digest; nil unless asked for.
	manifests map[digest.Digest]*cachedManifest
}

// scanCache walks the store, reads every tag record and, if withManifests,
// every manifest.
func scanCache(ctx context.Context, b cacheBackend, withManifests bool) (*cacheScan, error) {
	s := &cacheScan{entries: make(map[string]cachestore.Entry)}
	err := b.Walk(ctx, func(e cachestore.Entry) error {
		if old, ok := s.entries[e.Key]; !ok || e.LastUse.After(old.LastUse) {
			s.entries[e.Key] = e // an entry in both its files (a crash mid-commit): the newer
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var tagKeys, manifestKeys []string
	for key := range s.entries {
		switch {
		case strings.HasPrefix(key, "tags/"):
			tagKeys = append(tagKeys, key)
		case withManifests && strings.HasPrefix(key, "manifests/") && !strings.HasSuffix(key, ".meta"):
			manifestKeys = append(manifestKeys, key)
		}
	}
	slices.Sort(tagKeys) // so that the order of the tags read is the same each time
	var mu sync.Mutex
	tags := make([]*cachedTag, len(tagKeys))
	err = forEach(ctx, tagKeys, func(i int, key string) error {
		var t cachedTag
		err := readJSONEntry(ctx, b, key, maxTagRecordRead, &t)
		if err == nil && t.Digest.Validate() != nil {
			err = errors.New("bad digest")
		}
		if err != nil {
			if !errors.Is(err, cachestore.ErrNotFound) { // removed since the walk: not unreadable
				mu.Lock()
				s.unreadable++
				mu.Unlock()
			}
			return nil
		}
		t.entry = s.entries[key]
		tags[i] = &t
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, t := range tags {
		if t != nil {
			s.tags = append(s.tags, t)
		}
	}
	if !withManifests {
		return s, nil
	}
	s.manifests = make(map[digest.Digest]*cachedManifest, len(manifestKeys))
	err = forEach(ctx, manifestKeys, func(_ int, key string) error {
		d, ok := keyDigest(key)
		if !ok {
			return nil
		}
		var refs manifestRefs
		if err := readJSONEntry(ctx, b, key, maxManifestRead, &refs); err != nil {
			return nil // gone, or not a manifest of these shapes: it names nothing
		}
		m := refs.cached()
		mu.Lock()
		s.manifests[d] = m
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// cached keeps the valid digests a manifest names.
func (r *manifestRefs) cached() *cachedManifest {
	m := &cachedManifest{}
	add := func(list *[]digest.Digest, d digest.Digest) {
		if d.Validate() == nil {
			*list = append(*list, d)
		}
	}
	if r.Config != nil {
		add(&m.blobs, r.Config.Digest)
	}
	for _, l := range r.Layers {
		add(&m.blobs, l.Digest)
	}
	for _, l := range r.Blobs {
		add(&m.blobs, l.Digest)
	}
	for _, l := range r.FSLayers {
		add(&m.blobs, l.BlobSum)
	}
	for _, c := range r.Manifests {
		add(&m.children, c.Digest)
	}
	return m
}

// forEach calls fn for each of items, scanParallel at once, until one
// fails or ctx ends.
func forEach(ctx context.Context, items []string, fn func(i int, item string) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(scanParallel)
	for i, item := range items {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return fn(i, item) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// readJSONEntry decodes the entry at key, of at most limit bytes.
func readJSONEntry(ctx context.Context, b cachestore.Store, key string, limit int64, v any) error {
	r, err := b.Open(ctx, key)
	if err != nil {
		return err
	}
	defer r.Close()
	if r.Size() > limit {
		return fmt.Errorf("%s: %d bytes, more than %d", key, r.Size(), limit)
	}
	body, err := io.ReadAll(io.LimitReader(r, limit))
	if err != nil {
		return err
	}
	return json.Unmarshal(body, v)
}

// keyDigest returns the digest that names a blob's or manifest's key
// (blobs/sha256/HEX), and whether it is one.
func keyDigest(key string) (digest.Digest, bool) {
	parts := strings.Split(key, "/")
	if len(parts) != 3 || (parts[0] != "blobs" && parts[0] != "manifests") {
		return "", false
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(parts[1]), parts[2])
	return d, d.Validate() == nil
}

// reach returns the manifests and blobs that the manifest d leads to, d
// included, as far as they are cached: an index's manifests, and their
// config and layers.
func (s *cacheScan) reach(d digest.Digest) (manifests, blobs []digest.Digest) {
	seen := map[digest.Digest]bool{}
	seenBlob := map[digest.Digest]bool{}
	todo := []digest.Digest{d}
	for len(todo) > 0 {
		m := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if seen[m] {
			continue
		}
		seen[m] = true
		cm := s.manifests[m]
		if cm == nil {
			continue
		}
		manifests = append(manifests, m)
		todo = append(todo, cm.children...)
		for _, b := range cm.blobs {
			if !seenBlob[b] {
				seenBlob[b] = true
				blobs = append(blobs, b)
			}
		}
	}
	return manifests, blobs
}
