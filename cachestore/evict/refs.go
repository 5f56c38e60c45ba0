package evict

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// tagRef is what eviction reads of a tag record: the fields of the proxy's
// tagRecord (proxy/manifestcache.go) that say which manifest the tag names,
// when upstream last confirmed it, and until when the proxy serves it
// without asking upstream (the TTL its --manifest-ttl-rule gave it; zero in
// records written before TTL rules).
type tagRef struct {
	Digest    digest.Digest `json:"digest"`
	Validated time.Time     `json:"validated"`
	Expires   time.Time     `json:"expires"`
}

// indexRefs is what eviction reads of a manifest: the manifests an index
// (OCI image index, Docker manifest list) names. Image manifests have none.
type indexRefs struct {
	Manifests []struct {
		Digest digest.Digest `json:"digest"`
	} `json:"manifests"`
}

// Bounds of what the index reads: those of the proxy's records and
// manifests.
const (
	maxTagRecord = 64 << 10
	maxManifest  = 4 << 20
)

// references returns the keys of the manifests that tag records point to,
// and of those that an index among them names: a platform's manifest is
// in use as long as its index is. Records changed since they were last
// read are read again; a manifest's list is read once, since its body never
// changes.
func (ix *Index) references(ctx context.Context) map[string]bool {
	ix.readTags(ctx)
	refs := make(map[string]bool)
	var unread []victim
	ix.mu.Lock()
	for _, e := range ix.entries {
		if e.kind != Tag || e.read == nil || e.read.ref == "" {
			continue
		}
		key := cachestore.ManifestKey(e.read.ref)
		refs[key] = true
		if m := ix.entries[key]; m != nil && m.read == nil {
			unread = append(unread, victim{m, m.gen})
		}
	}
	ix.mu.Unlock()
	for _, v := range unread {
		children := ix.readChildren(ctx, v.e.key)
		ix.mu.Lock()
		v.e.read = &readInfo{children: children}
		ix.mu.Unlock()
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for key := range refs {
		if m := ix.entries[key]; m != nil && m.read != nil {
			for _, c := range m.read.children {
				refs[cachestore.ManifestKey(c)] = true
			}
		}
	}
	return refs
}

// readTags reads the tag records not read since their last commit. One
// that is gone, too large or cannot be decoded counts as expired: it is of
// no use. One that fails to read otherwise is read again next time.
func (ix *Index) readTags(ctx context.Context) {
	var todo []victim
	ix.mu.Lock()
	for _, e := range ix.entries {
		if e.kind == Tag && (e.read == nil || e.read.gen != e.gen) {
			todo = append(todo, victim{e, e.gen})
		}
	}
	ix.mu.Unlock()
	for _, v := range todo {
		var ref tagRef
		err := ix.readJSON(ctx, v.e.key, maxTagRecord, &ref)
		if err != nil && !useless(err) {
			continue
		}
		if err != nil || ref.Digest.Validate() != nil {
			ref = tagRef{}
		}
		ix.mu.Lock()
		if v.e.gen == v.gen {
			v.e.read = &readInfo{gen: v.gen, ref: ref.Digest, validated: ref.Validated, expires: ref.Expires}
		}
		ix.mu.Unlock()
	}
}

// readChildren returns the manifests the manifest at key names, if it is
// an index.
func (ix *Index) readChildren(ctx context.Context, key string) []digest.Digest {
	var idx indexRefs
	if err := ix.readJSON(ctx, key, maxManifest, &idx); err != nil {
		return nil
	}
	var ds []digest.Digest
	for _, m := range idx.Manifests {
		if m.Digest.Validate() == nil {
			ds = append(ds, m.Digest)
		}
	}
	return ds
}

// errTooLarge is readJSON's error for an entry over its limit.
var errTooLarge = errors.New("evict: record too large")

// useless reports whether readJSON's error says the entry is of no use:
// gone, too large or not JSON of the right shape, rather than unreadable
// for now.
func useless(err error) bool {
	return errors.Is(err, cachestore.ErrNotFound) || errors.Is(err, errTooLarge) ||
		errors.As(err, new(*json.SyntaxError)) || errors.As(err, new(*json.UnmarshalTypeError)) ||
		errors.Is(err, io.ErrUnexpectedEOF)
}

// readJSON decodes the entry at key. The read is the index's own, not a
// use of the entry.
func (ix *Index) readJSON(ctx context.Context, key string, limit int64, v any) error {
	ix.mu.Lock()
	ix.reading[key]++
	ix.mu.Unlock()
	defer func() {
		ix.mu.Lock()
		if ix.reading[key]--; ix.reading[key] == 0 {
			delete(ix.reading, key)
		}
		ix.mu.Unlock()
	}()
	r, err := ix.store.Open(ctx, key)
	if err != nil {
		return err
	}
	defer r.Close()
	if r.Size() > limit {
		return fmt.Errorf("%s: %d bytes, more than %d: %w", key, r.Size(), limit, errTooLarge)
	}
	b, err := io.ReadAll(io.LimitReader(r, limit))
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
