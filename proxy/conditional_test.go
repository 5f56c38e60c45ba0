package proxy_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestConditionalGetOfUncachedManifest: a client that already holds the
// manifest a tag names asks with If-None-Match and its digest, as a
// registry's ETag gives it. Whether the tag is cached or not, it gets 304
// without a body, as from the registry; the miss still fills the cache.
func TestConditionalGetOfUncachedManifest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client()
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "r", "v1", img)
	d, _ := img.Digest()
	etag := `"` + d.String() + `"`
	for _, tc := range []struct {
		step, ref    string
		wantUpstream int64 // manifest GETs
	}{
		{"tag, not cached", "v1", 1},
		{"tag, cached", "v1", 0},
		{"digest, cached", d.String(), 0},
	} {
		e.up.ResetCounts()
		resp, body := e.get(c, "GET", "/v2/r/manifests/"+tc.ref, "If-None-Match", etag)
		if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
			t.Errorf("%s: If-None-Match %s: %d with %d bytes; want 304 and none", tc.step, etag, resp.StatusCode, len(body))
		}
		if got := resp.Header.Get("Etag"); got != etag {
			t.Errorf("%s: ETag %q; want %q", tc.step, got, etag)
		}
		if n := e.up.Count("GET manifest"); n != tc.wantUpstream {
			t.Errorf("%s: %d upstream manifest GETs; want %d", tc.step, n, tc.wantUpstream)
		}
	}
	resp, body := e.get(c, "GET", "/v2/r/manifests/v1", "If-None-Match", `"sha256:`+strings.Repeat("0", 64)+`"`)
	if resp.StatusCode != http.StatusOK || len(body) == 0 {
		t.Errorf("If-None-Match with another digest: %d with %d bytes; want 200 and the manifest", resp.StatusCode, len(body))
	}
}
