package proxy_test

import (
	"io"
	"net/http"
	"testing"
)

// BenchmarkBlobHit measures a cached 4 MiB blob served through the MITM
// path to a keep-alive client: the hot path of a warm cluster.
func BenchmarkBlobHit(b *testing.B) {
	e := newEnv(b)
	d, want := oneLayer(b, e, 4<<20)
	c := e.client()
	url := "https://" + e.up.Host + "/v2/r/blobs/" + d.String()
	fetch := func() {
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != int64(len(want)) {
			b.Fatalf("read %d, %v", n, err)
		}
	}
	fetch() // fill
	b.SetBytes(int64(len(want)))
	b.ReportAllocs()
	for b.Loop() {
		fetch()
	}
	if n := e.up.Count("GET blob"); n != 1 {
		b.Fatalf("%d upstream GETs; want 1", n)
	}
}

// BenchmarkTagManifestHit measures a fresh tag manifest served from the
// cache on one keep-alive connection.
func BenchmarkTagManifestHit(b *testing.B) {
	e := newEnv(b)
	img := e.up.RandomImage(b, 1, 100)
	e.up.Push(b, "r", "latest", img)
	c := e.client()
	req, _ := http.NewRequest("GET", "https://"+e.up.Host+"/v2/r/manifests/latest", nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	get := func() {
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	get()
	e.up.ResetCounts()
	b.ReportAllocs()
	for b.Loop() {
		get()
	}
	if n := e.up.Total(); n != 0 {
		b.Fatalf("%d upstream requests while fresh; want 0", n)
	}
}
