package proxy_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"
)

// startSlowFill starts a GET of the blob through the proxy against an
// upstream that trickles it, and returns the response once headers came.
func startSlowFill(t *testing.T, e *env, path string) *http.Response {
	t.Helper()
	resp, err := (&http.Client{Transport: e.transport()}).Get("https://" + e.up.Host + path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestRangeDuringFill(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	d, want := oneLayer(t, e, 512<<10)
	e.up.SetFault(slowBlob(want, 50, 20*time.Millisecond))
	path := "/v2/r/blobs/" + d.String()
	leader := startSlowFill(t, e, path)

	resp, got := e.get(e.client(), "GET", path, "Range", "bytes=300000-300999")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, want[300000:301000]) {
		t.Fatalf("Range during fill: %d, %d bytes; want 206 and bytes 300000-300999", resp.StatusCode, len(got))
	}
	all, err := io.ReadAll(leader.Body)
	if err != nil || !bytes.Equal(all, want) {
		t.Fatalf("leader: %d bytes, %v", len(all), err)
	}
	if n := e.up.Count("GET blob"); n != 1 {
		t.Fatalf("%d upstream blob GETs; want 1", n)
	}
}

func TestSlowClientDoesNotSlowOthers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	d, want := oneLayer(t, e, 16<<20)
	path := "/v2/r/blobs/" + d.String()
	e.up.SetFault(slowBlob(want, 8, 10*time.Millisecond))
	stalled := startSlowFill(t, e, path) // never reads its body
	io.ReadFull(stalled.Body, make([]byte, 1))

	done := make(chan error, 1)
	go func() {
		resp, got := e.get(e.client(), "GET", path)
		if resp.StatusCode != 200 || !bytes.Equal(got, want) {
			done <- io.ErrUnexpectedEOF
			return
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal("second client got a wrong blob")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a client that stopped reading held up another client for 20s")
	}
	if n := e.up.Count("GET blob"); n != 1 {
		t.Fatalf("%d upstream blob GETs; want 1", n)
	}
}

func TestFillSharedAcrossRegistries(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	other := e.secondRegistry(true)

	img := e.up.RandomImage(t, 1, 256<<10)
	e.up.Push(t, "r", "t", img)
	other.Push(t, "mirror/r", "t", img)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	want, _ := io.ReadAll(rc)
	rc.Close()
	e.up.SetFault(slowBlob(want, 20, 20*time.Millisecond))
	leader := startSlowFill(t, e, "/v2/r/blobs/"+d.String())

	req, _ := http.NewRequest("GET", "https://"+other.Host+"/v2/mirror/r/blobs/"+d.String(), nil)
	resp, err := e.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("blob via the second registry: %d bytes, %v", len(got), err)
	}
	io.Copy(io.Discard, leader.Body)
	if a, b := e.up.Count("GET blob"), other.Count("GET blob"); a != 1 || b != 0 {
		t.Fatalf("upstream blob GETs: first registry %d, second %d; want 1 and 0 (one fill for one digest)", a, b)
	}
}
