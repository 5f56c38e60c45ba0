package upstreamauth_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/regproxy/regproxy/upstreamauth"
)

// benchNames is how many distinct repository names one run of
// BenchmarkTokenCacheDistinctNames pulls: as many as a client making up
// names could send in a short while.
const benchNames = 100_000

// benchToken is as long as a Docker Hub JWT, so that the heap counts what
// a real cache entry costs.
var benchToken = strings.Repeat("t", 1500)

// benchRegistry is a plain-http registry and token server in one: any
// Bearer token pulls anything, anything else gets a challenge whose realm
// is its own /token.
func benchRegistry(b *testing.B) *httptest.Server {
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/token":
			_ = json.NewEncoder(w).Encode(map[string]any{"token": benchToken, "expires_in": 300})
		case strings.HasPrefix(r.Header.Get("Authorization"), "Bearer "):
			_, _ = io.WriteString(w, `{"tags":[]}`)
		default:
			repo := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/tags/list")
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="bench",scope="repository:%s:pull"`, srv.URL, repo))
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	b.Cleanup(srv.Close)
	return srv
}

// BenchmarkTokenCacheDistinctNames pulls the tag lists of benchNames
// distinct repositories with configured credentials, each name new to the
// cache (as a hostile client would send them), and reports how much the
// heap grew: flat, because the token cache is bounded, not one token per
// name.
//
//	go test -run '^$' -bench TokenCacheDistinctNames -benchtime 1x ./upstreamauth/
func BenchmarkTokenCacheDistinctNames(b *testing.B) {
	srv := benchRegistry(b)
	host := strings.TrimPrefix(srv.URL, "http://")
	inner := &http.Transport{MaxIdleConnsPerHost: 4}
	b.Cleanup(inner.CloseIdleConnections)
	rt := upstreamauth.New(inner, upstreamauth.Keyring{host: {Username: "u", Password: "p"}}, upstreamauth.Options{})
	pull := func(name string) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/"+name+"/tags/list", nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("pull %s: got %d, want 200", name, resp.StatusCode)
		}
	}
	pull("warm-up") // connections, and the transport's own allocations
	before := heapInUse()
	run := 0
	for b.Loop() {
		for i := range benchNames {
			pull(fmt.Sprintf("made-up/%d/%d", run, i))
		}
		run++
	}
	growth := float64(heapInUse()) - float64(before)
	runtime.KeepAlive(rt)
	b.ReportMetric(growth/(1<<20), "heap-MiB")
	b.ReportMetric(growth/float64(run*benchNames), "B/name")
}

// heapInUse returns the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
