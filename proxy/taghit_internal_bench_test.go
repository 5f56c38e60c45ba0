package proxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regproxy/regproxy/ca"
	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/internal/testupstream"
)

// BenchmarkTagHitHandler measures what regproxy itself spends on a fresh
// tag hit, the request already read: the registry server's handler with
// its access log (text, at info, into io.Discard), without the client,
// TLS or the network, which BenchmarkTagManifestHit includes.
func BenchmarkTagHitHandler(b *testing.B) {
	for _, tc := range []struct {
		name string
		auth string
	}{
		{"anonymous", ""},
		{"token", "Bearer " + strings.Repeat("t", 900)}, // about a Docker Hub token's size
	} {
		b.Run(tc.name, func(b *testing.B) {
			h, r := tagHitFixture(b, tc.auth)
			w := &discardWriter{header: http.Header{}}
			serve := func() {
				clear(w.header)
				w.status = 0
				h.ServeHTTP(w, r)
				if w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			}
			serve() // the miss that caches the tag
			b.ReportAllocs()
			for b.Loop() {
				serve()
			}
		})
	}
}

// tagHitFixture returns the handler of intercepted connections of a proxy
// in front of an upstream holding r/latest, and a GET of that tag as it
// arrives on an intercepted connection.
func tagHitFixture(b *testing.B, auth string) (http.Handler, *http.Request) {
	p, r := tagHitProxy(b, auth)
	return p.mitmSrv.Handler, r
}

// tagHitProxy is tagHitFixture's proxy and request.
func tagHitProxy(b *testing.B, auth string) (*Proxy, *http.Request) {
	up := testupstream.Start(b)
	up.Push(b, "r", "latest", up.RandomImage(b, 1, 100))
	dir := b.TempDir()
	authority, err := ca.LoadOrCreate(filepath.Join(dir, "ca"), ca.Options{})
	if err != nil {
		b.Fatal(err)
	}
	store, err := cachestore.NewDisk(filepath.Join(dir, "cache"))
	if err != nil {
		b.Fatal(err)
	}
	from, to, _ := strings.Cut(up.Resolve(), "=")
	p, err := New(Config{CA: authority, Store: store, Registries: []string{"registry.test"},
		Resolve: map[string]string{from: to}, UpstreamRoots: up.CertPool(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	ctx := withTagMemo(withCredCache(context.WithValue(context.Background(), targetKey{}, up.Host)))
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, "/v2/r/manifests/latest", nil)
	if err != nil {
		b.Fatal(err)
	}
	r.Host = up.Host
	r.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
	r.Header.Set("User-Agent", "containerd/v2.0.0")
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	return p, r
}

// BenchmarkFastPathTagHit measures a tag hit on the fast path from the
// request's bytes to the response's: parsing, the registry handler with
// its access log, and framing, without TLS or the network.
func BenchmarkFastPathTagHit(b *testing.B) {
	p, r := tagHitProxy(b, "")
	raw := []byte("GET /v2/r/manifests/latest HTTP/1.1\r\nHost: " + r.Host + "\r\nUser-Agent: containerd/v2.0.0\r\n" +
		"Accept: " + r.Header.Get("Accept") + "\r\nAccept-Encoding: gzip\r\n\r\n")
	var out countingWriter
	fc := &fastConn{bw: bufio.NewWriterSize(&out, fastHeaderBuffer), remoteAddr: "192.0.2.1:40000",
		ctx: connValues(context.Background(), &targetConn{target: r.Host})}
	serve := func() {
		var req http.Request
		if !parseFastRequest(raw, &req) {
			b.Fatal("the fast path refuses the request")
		}
		req.RemoteAddr = fc.remoteAddr
		if !p.serveFastRequest(fc, &req) {
			b.Fatal("the connection would be closed")
		}
	}
	serve() // the miss that caches the tag
	before := out.n
	serve()
	if out.n == before {
		b.Fatal("nothing written")
	}
	b.ReportAllocs()
	for b.Loop() {
		serve()
	}
}

// countingWriter counts what is written to it.
type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

// discardWriter is a ResponseWriter that keeps only the status.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.header }

func (w *discardWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *discardWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(p), nil
}
