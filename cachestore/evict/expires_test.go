package evict_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/evict"
)

// tagExpiring commits a tag record naming d, validated at v, that holds
// its own expiry, as the proxy writes them since TTL rules.
func tagExpiring(t *testing.T, s cachestore.Store, name string, d digest.Digest, v, expires time.Time) string {
	t.Helper()
	key := cachestore.TagKey(digest.FromString(name).Encoded())
	rec, _ := json.Marshal(map[string]any{"registry": "r.test", "repository": "app", "tag": name,
		"digest": d, "validated": v, "expires": expires})
	put(t, s, key, record, rec)
	return key
}

// TestTagRecordExpiry trims a cache to nothing with a --manifest-ttl of an
// hour: a record whose rule gave it 60 days stays two hours after its
// validation, with its manifest, where a record without an expiry of its
// own goes after the hour; one with a TTL of zero (expires = validated)
// goes at once, and a record without an expiry still within the hour
// stays.
func TestTagRecordExpiry(t *testing.T) {
	t.Parallel()
	clk := newClock()
	s := newDisk(t, t.TempDir())
	now := clk.Now()
	ruledM, legacyM, zeroM, freshM := manifest(t, s, 100), manifest(t, s, 100), manifest(t, s, 100), manifest(t, s, 100)
	ruled := tagExpiring(t, s, "v1.2.3", ruledM, now.Add(-2*time.Hour), now.Add(60*24*time.Hour))
	legacy := tag(t, s, "v1", legacyM, now.Add(-2*time.Hour))
	zero := tagExpiring(t, s, "latest", zeroM, now.Add(-10*time.Minute), now.Add(-10*time.Minute))
	fresh := tag(t, s, "v2", freshM, now.Add(-10*time.Minute))
	b := blob(t, s, 'b', 1000)

	ix := evict.New(s, evict.Config{Now: clk.Now, ManifestTTL: time.Hour, Logger: logger(t)})
	if err := ix.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	ix.Trim(t.Context(), 0)
	for _, key := range []string{b, legacy, zero, cachestore.ManifestKey(legacyM), cachestore.ManifestKey(zeroM)} {
		if has(s, key) {
			t.Errorf("%s is still cached, want it evicted", key)
		}
	}
	for _, key := range []string{ruled, fresh, cachestore.ManifestKey(ruledM), cachestore.ManifestKey(freshM)} {
		if !has(s, key) {
			t.Errorf("%s was evicted, want it kept: its tag record has not expired", key)
		}
	}

	// Past the rule's 60 days, the record goes too.
	clk.Advance(61 * 24 * time.Hour)
	ix.Trim(t.Context(), 0)
	for _, key := range []string{ruled, fresh, cachestore.ManifestKey(ruledM), cachestore.ManifestKey(freshM)} {
		if has(s, key) {
			t.Errorf("after 61 days: %s is still cached, want it evicted", key)
		}
	}
}
