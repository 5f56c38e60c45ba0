package proxy_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// oneLayer pushes an image with one layer of n bytes and returns the
// layer's digest and bytes.
func oneLayer(t testing.TB, e *env, n int64) (v1.Hash, []byte) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	layer := static.NewLayer(b, types.DockerLayer)
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	e.up.Push(t, "r", "t", img)
	d, _ := layer.Digest()
	return d, b
}

// firstBlobGET applies fault to the first blob GET only; later requests
// reach the registry unharmed.
func firstBlobGET(fault testupstream.Fault) testupstream.Fault {
	var n atomic.Int32
	return func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET blob" || n.Add(1) > 1 {
			return false
		}
		return fault(w, r)
	}
}

// fetchBlob GETs a blob through the proxy and returns its bytes, or the
// error the client saw.
func fetchBlob(e *env, c *http.Client, d v1.Hash) ([]byte, error) {
	resp, err := c.Get("https://" + e.up.Host + "/v2/r/blobs/" + d.String())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	return io.ReadAll(resp.Body)
}

// assertCachedOnce checks that the blob is now served without upstream.
func assertCachedOnce(t *testing.T, e *env, c *http.Client, d v1.Hash, want []byte) {
	t.Helper()
	e.up.ResetCounts()
	got, err := fetchBlob(e, c, d)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("cached blob: %d bytes, %v", len(got), err)
	}
	if n := e.up.Count("GET blob"); n != 0 {
		t.Fatalf("%d upstream GETs for a blob that should be cached", n)
	}
}

func TestCutBlobIsResumedWithRange(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	d, want := oneLayer(t, e, 200<<10)
	e.up.SetFault(firstBlobGET(testupstream.CutBlobAfter(50 << 10)))
	c := e.client()
	got, err := fetchBlob(e, c, d)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("blob cut upstream at 50 KiB: client got %d bytes, %v; want the whole blob", len(got), err)
	}
	if n := e.up.Count("GET blob"); n != 2 {
		t.Fatalf("%d upstream blob GETs; want 2 (the cut one and one Range resume)", n)
	}
	assertCachedOnce(t, e, c, d, want)
}

func TestFailedFillAbortsClientAndCachesNothing(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		fault func(want []byte) testupstream.Fault
	}{
		{"digest mismatch", func(want []byte) testupstream.Fault {
			return firstBlobGET(func(w http.ResponseWriter, _ *http.Request) bool {
				bad := bytes.Clone(want)
				bad[len(bad)/2] ^= 1
				w.Header().Set("Content-Length", fmt.Sprint(len(bad)))
				w.Write(bad)
				return true
			})
		}},
		{"cut and no range support", func([]byte) testupstream.Fault {
			cut := firstBlobGET(testupstream.CutBlobAfter(1000))
			return func(w http.ResponseWriter, r *http.Request) bool {
				if r.Header.Get("Range") != "" {
					http.Error(w, "no ranges here", http.StatusServiceUnavailable)
					return true
				}
				return cut(w, r)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			d, want := oneLayer(t, e, 100<<10)
			e.up.SetFault(tc.fault(want))
			c := e.client()
			if got, err := fetchBlob(e, c, d); err == nil {
				t.Fatalf("client got %d bytes and no error from a failed fill; want the connection cut", len(got))
			}
			assertNoBlobFiles(t, e)
			got, err := fetchBlob(e, c, d)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("retry after the failed fill: %d bytes, %v", len(got), err)
			}
			assertCachedOnce(t, e, c, d, want)
		})
	}
}

// assertNoBlobFiles checks that no blob and no spool file is on disk.
func assertNoBlobFiles(t *testing.T, e *env) {
	t.Helper()
	for _, dir := range []string{"blobs", "tmp"} {
		filepath.Walk(filepath.Join(e.dataDir, "cache", dir), func(path string, info os.FileInfo, err error) error {
			if err == nil && !info.IsDir() {
				t.Errorf("file left behind by a failed fill: %s", path)
			}
			return nil
		})
	}
}

// slowBlob serves want in chunks with pauses, like a slow upstream.
func slowBlob(want []byte, chunks int, pause time.Duration) testupstream.Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET blob" {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(want)))
		step := (len(want) + chunks - 1) / chunks
		for off := 0; off < len(want); off += step {
			w.Write(want[off:min(off+step, len(want))])
			w.(http.Flusher).Flush()
			time.Sleep(pause)
		}
		return true
	}
}

func TestFillContinuesAfterClientLeaves(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	d, want := oneLayer(t, e, 256<<10)
	e.up.SetFault(slowBlob(want, 20, 20*time.Millisecond))
	tr := e.transport()
	resp, err := (&http.Client{Transport: tr}).Get("https://" + e.up.Host + "/v2/r/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(resp.Body, make([]byte, 1000))
	resp.Body.Close() // the only client goes away early
	tr.CloseIdleConnections()

	c := e.client()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rp, _ := e.get(c, "HEAD", "/v2/r/blobs/"+d.String())
		if rp.StatusCode == 200 && e.up.Count("GET blob") == 1 && e.up.Count("HEAD blob") == 0 {
			break // answered from the fill or the cache, never upstream
		}
		if time.Now().After(deadline) {
			t.Fatalf("HEAD status %d, upstream blob GETs %d, HEADs %d", rp.StatusCode, e.up.Count("GET blob"), e.up.Count("HEAD blob"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	got, err := fetchBlob(e, c, d)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after the first client left: %d bytes, %v", len(got), err)
	}
	if n := e.up.Count("GET blob"); n != 1 {
		t.Fatalf("%d upstream blob GETs; want 1: the fill went on without its client", n)
	}
}

func TestLargeUpstreamErrorBodyIsRelayed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	big := bytes.Repeat([]byte("x"), 40<<10) // more than the transport reads with the headers
	e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET blob" {
			return false
		}
		w.WriteHeader(http.StatusForbidden)
		w.(http.Flusher).Flush()
		time.Sleep(50 * time.Millisecond) // the body arrives after the headers
		w.Write(big)
		return true
	})
	resp, body := e.get(e.client(), "GET", "/v2/r/blobs/sha256:"+fmt.Sprintf("%064x", 1))
	if resp.StatusCode != http.StatusForbidden || !bytes.Equal(body, big) {
		t.Fatalf("status %d, %d body bytes; want upstream's 403 with its %d-byte body", resp.StatusCode, len(body), len(big))
	}
}
