package proxy_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// TestHopByHopHeadersStayOnTheirHop: a header that the client names in
// Connection concerns the client's connection to regproxy and must not
// reach upstream; one that upstream names in Connection must not reach the
// client (RFC 9110, section 7.6.1). Both directions are checked on the
// paths regproxy builds itself (a manifest fetched and cached, the HEAD of
// a tag, a blob fill) and on the pass-through.
func TestHopByHopHeadersStayOnTheirHop(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "r", "v1", img)
	e.up.Push(t, "r", "v2", e.up.RandomImage(t, 1, 1000))
	layers, _ := img.Layers()
	layer, _ := layers[0].Digest()

	var mu sync.Mutex
	var leaked []string // what reached upstream that should not have
	e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		for _, h := range []string{"X-Secret", "Keep-Alive"} {
			if v := r.Header.Get(h); v != "" {
				leaked = append(leaked, testupstream.Kind(r)+": "+h+": "+v)
			}
		}
		mu.Unlock()
		w.Header().Set("Connection", "X-Upstream-Secret, Keep-Alive")
		w.Header().Set("X-Upstream-Secret", "v")
		w.Header().Set("Keep-Alive", "timeout=5")
		return false // and on to the registry
	})
	c := e.client()
	for _, tc := range []struct{ name, method, path string }{
		{"manifest fetched", "GET", "/v2/r/manifests/v1"},
		{"tag HEAD passed on", "HEAD", "/v2/r/manifests/v2"},
		{"blob fill", "GET", "/v2/r/blobs/" + layer.String()},
		{"pass-through", "GET", "/v2/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _ := e.get(c, tc.method, tc.path, "Connection", "X-Secret, Keep-Alive", "X-Secret", "v", "Keep-Alive", "300")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s %s: %d", tc.method, tc.path, resp.StatusCode)
			}
			for _, h := range []string{"X-Upstream-Secret", "Keep-Alive"} {
				if v := resp.Header.Get(h); v != "" {
					t.Errorf("%s %s: the client got %s: %s, which upstream named in Connection", tc.method, tc.path, h, v)
				}
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if len(leaked) > 0 {
		t.Errorf("headers the client named in Connection reached upstream:\n%s", strings.Join(leaked, "\n"))
	}
}
