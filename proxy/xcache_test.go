package proxy_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// TestBlobXCache: a blob response says where its bytes came from, in the
// access log's words: MISS for the request whose fill fetched it,
// MISS-JOINED for one that joined that fill, HIT from the cache (HEAD
// too).
func TestBlobXCache(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	img := e.up.RandomImage(t, 1, 64<<10)
	e.up.Push(t, "r", "v1", img)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	path := "/v2/r/blobs/" + d.String()
	c := e.client()

	// The upstream holds the first GET until a second one has joined.
	release := make(chan struct{})
	e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) == "GET blob" {
			<-release
		}
		return false
	})
	first := make(chan string)
	go func() {
		resp, _ := e.get(c, http.MethodGet, path)
		first <- resp.Header.Get("X-Cache")
	}()
	for e.up.Count("GET blob") == 0 {
		time.Sleep(time.Millisecond)
	}
	joined := make(chan string)
	go func() {
		resp, _ := e.get(e.client(), http.MethodGet, path)
		joined <- resp.Header.Get("X-Cache")
	}()
	time.Sleep(50 * time.Millisecond) // the second GET finds the fill
	close(release)
	if got := <-first; got != "MISS" {
		t.Errorf("the GET that filled: X-Cache %q; want MISS", got)
	}
	if got := <-joined; got != "MISS-JOINED" {
		t.Errorf("the GET that joined: X-Cache %q; want MISS-JOINED", got)
	}
	e.up.SetFault(nil)
	// Until the fill has committed the blob, requests still join it.
	for i := 0; ; i++ {
		resp, _ := e.get(c, http.MethodGet, path)
		if got := resp.Header.Get("X-Cache"); got == "HIT" {
			break
		} else if got != "MISS-JOINED" || i == 200 {
			t.Fatalf("GET after the fill: X-Cache %q; want MISS-JOINED until it commits, then HIT", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if resp, _ := e.get(c, http.MethodHead, path); resp.Header.Get("X-Cache") != "HIT" {
		t.Errorf("HEAD of a cached blob: X-Cache %q; want HIT", resp.Header.Get("X-Cache"))
	}
	if n := e.up.Count("GET blob"); n != 1 {
		t.Errorf("%d blob GETs upstream; want 1", n)
	}
}
