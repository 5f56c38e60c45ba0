package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regproxy/regproxy/ca"
	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/internal/testupstream"
	"github.com/regproxy/regproxy/proxy"
)

// servedProxy is a proxy the test stops itself, with Shutdown or Close.
type servedProxy struct {
	*env                   // for its client; its stop is not used
	p        *proxy.Proxy  //
	served   chan struct{} // closed when Serve has returned
	serveErr error         // Serve's result, once served is closed
}

// serveProxy serves a proxy in front of a fresh upstream, as newEnv does,
// but hands the Proxy to the test. It is closed when the test ends.
func serveProxy(t *testing.T) *servedProxy {
	t.Helper()
	e := &env{t: t, up: testupstream.Start(t), dataDir: t.TempDir(), registries: []string{"registry.test"}}
	authority, err := ca.LoadOrCreate(filepath.Join(e.dataDir, "ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cachestore.NewDisk(filepath.Join(e.dataDir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	resolve := map[string]string{}
	for _, r := range e.up.Resolves() {
		from, to, _ := strings.Cut(r, "=")
		resolve[from] = to
	}
	p, err := proxy.New(proxy.Config{CA: authority, Store: store, Registries: e.registries,
		Resolve: resolve, UpstreamRoots: e.upstreamRoots(), Logger: e.logger()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &servedProxy{env: e, p: p, served: make(chan struct{})}
	go func() { s.serveErr = p.Serve(context.Background(), ln); close(s.served) }()
	e.proxyURL = &url.URL{Scheme: "http", Host: ln.Addr().String()}
	e.caPEM = authority.CertPEM()
	t.Cleanup(func() { p.Close(); <-s.served })
	return s
}

// stalledBlob is a Fault that sends the first n bytes of want and then
// nothing until the proxy hangs up or the test ends.
func stalledBlob(t *testing.T, want []byte, n int) testupstream.Fault {
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	return func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET blob" {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(want)))
		w.Write(want[:n])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-done:
		}
		return true
	}
}

// refusesConnections waits until nothing accepts on addr.
func refusesConnections(t *testing.T, addr string) {
	t.Helper()
	for range 100 {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the proxy port still accepts connections during Shutdown")
}

// TestShutdownDrains shuts down while a blob trickles to a client: the
// port closes at once, the response completes, and Shutdown and Serve
// return nil with the blob committed and the spool empty.
func TestShutdownDrains(t *testing.T) {
	t.Parallel()
	s := serveProxy(t)
	d, want := oneLayer(t, s.env, 256<<10)
	s.up.SetFault(slowBlob(want, 20, 50*time.Millisecond)) // about 1s
	resp := startSlowFill(t, s.env, "/v2/r/blobs/"+d.String())

	shut := make(chan error, 1)
	go func() { shut <- s.p.Shutdown(context.Background()) }()
	refusesConnections(t, s.proxyURL.Host)
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("download during Shutdown: %d of %d bytes, %v", len(got), len(want), err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown = %v, want nil", err)
	}
	<-s.served
	if s.serveErr != nil {
		t.Errorf("Serve = %v, want nil", s.serveErr)
	}
	hex := d.Hex
	if _, err := os.Stat(filepath.Join(s.dataDir, "cache", "blobs", "sha256", hex[:2], hex)); err != nil {
		t.Errorf("blob not committed after Shutdown: %v", err)
	}
	if left, _ := os.ReadDir(filepath.Join(s.dataDir, "cache", "tmp")); len(left) != 0 {
		t.Errorf("cache/tmp after Shutdown holds %d files, want none", len(left))
	}
}

// TestCloseCutsShutdownShort calls Close while a Shutdown with a long grace
// waits for a stalled download: the download is cut, and Shutdown returns
// at once with its context's error and the spool empty.
func TestCloseCutsShutdownShort(t *testing.T) {
	t.Parallel()
	s := serveProxy(t)
	d, want := oneLayer(t, s.env, 256<<10)
	s.up.SetFault(stalledBlob(t, want, 64<<10))
	resp := startSlowFill(t, s.env, "/v2/r/blobs/"+d.String())
	io.ReadFull(resp.Body, make([]byte, 1024))

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		shut <- s.p.Shutdown(ctx)
	}()
	refusesConnections(t, s.proxyURL.Host)
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a download in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	s.p.Close()
	select {
	case err := <-shut:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Shutdown = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown still waiting 10s after Close")
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("the cut download ended without an error")
	}
	if left, _ := os.ReadDir(filepath.Join(s.dataDir, "cache", "tmp")); len(left) != 0 {
		t.Errorf("cache/tmp after Close holds %d files, want none", len(left))
	}
}
