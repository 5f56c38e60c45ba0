package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/azure"
	"github.com/regproxy/regproxy/cachestore/tiered"
	"github.com/regproxy/regproxy/internal/azuritetest"
	"github.com/regproxy/regproxy/proxy"
)

// The pull tests below run once per storage backend: the disk store; an
// Azure container of their own in the package's shared Azurite; and that
// container behind a local tier (cachestore/tiered), as --storage azure
// --disk-cache-size serves. The Azure cases also check that no blob stays
// under the data dir outside the local tier, if any.

// backend is a store the proxy tests run against.
type backend struct {
	name string
	// use points e's proxy at the backend from its next start on; nil
	// keeps the env's disk store.
	use func(t *testing.T, e *env)
	// localTier: the data dir's cache holds blobs (DATA_DIR/cache, the
	// local tier in front of Azure).
	localTier bool
}

var backends = []backend{
	{"disk", nil, false},
	{"azure", func(t *testing.T, e *env) {
		az := azuritetest.Shared(t)
		e.useAzure(az, az.Container())
	}, false},
	{"azure+local", func(t *testing.T, e *env) {
		az := azuritetest.Shared(t)
		e.useTiered(az, az.Container())
	}, true},
}

// forEachBackend runs test once per backend, as parallel subtests, each
// with a proxy of its own on that backend.
//
// Tests that use Azurite do not call t.Parallel themselves: they run before
// the package's parallel tests, whose timeouts a busy Azurite (a node
// process, beyond -parallel's reach) would otherwise squeeze.
func forEachBackend(t *testing.T, test func(t *testing.T, e *env)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			if b.use != nil {
				b.use(t, e)
				e.restart()
			}
			test(t, e)
			if b.use != nil {
				e.waitCommitted()
				if b.localTier {
					e.wantFilesOnlyIn("ca", "cache") // and no spool file
					if e.localBlobs() == 0 {
						t.Errorf("the local tier holds no blob")
					}
				} else {
					e.wantNoLocalBlobs()
				}
			}
		})
	}
}

// useAzure makes every later start of e's proxy use a new store on
// container, and spool in DATA_DIR/spool, as regproxy serve --storage azure
// does.
func (e *env) useAzure(az *azuritetest.Azurite, container string) {
	spool := filepath.Join(e.dataDir, "spool")
	if err := os.MkdirAll(spool, 0o755); err != nil {
		e.t.Fatal(err)
	}
	e.configure = func(cfg *proxy.Config) {
		cfg.Store = newAzureStore(e.t, az, container)
		cfg.SpoolDir = spool
	}
}

// useTiered is useAzure with a local tier in DATA_DIR/cache in front of
// the container, as regproxy serve --storage azure --disk-cache-size does
// (unbounded here: eviction is cachestore/evict's, tested there).
func (e *env) useTiered(az *azuritetest.Azurite, container string) {
	e.useAzure(az, container)
	azureOnly := e.configure
	e.configure = func(cfg *proxy.Config) {
		local := cfg.Store.(*cachestore.Disk) // the env's, in DATA_DIR/cache
		azureOnly(cfg)
		ts := tiered.New(local, cfg.Store, e.logger())
		e.t.Cleanup(func() { ts.Close() })
		cfg.Store = ts
	}
}

// localBlobs counts the blobs in DATA_DIR/cache: the disk store's, or the
// local tier's.
func (e *env) localBlobs() int {
	n := 0
	filepath.WalkDir(filepath.Join(e.dataDir, "cache", "blobs"), func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

// newAzureStore returns a store on container, closed when t ends.
func newAzureStore(t testing.TB, az *azuritetest.Azurite, container string) *azure.Store {
	t.Helper()
	s, err := azure.New(context.Background(), azure.Config{AccountName: azuritetest.Account,
		AccountKey: azuritetest.Key, Endpoint: az.Endpoint, Container: container})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitCommitted waits until no fill of e's proxy holds a spool file: each
// has committed its blob (or given up). A fill's readers finish before its
// commit does.
func (e *env) waitCommitted() {
	e.t.Helper()
	spool := filepath.Join(e.dataDir, "spool") // see useAzure
	if _, err := os.Stat(spool); err != nil {
		spool = filepath.Join(e.dataDir, "cache", "tmp") // the disk store's
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		entries, err := os.ReadDir(spool)
		if err != nil {
			e.t.Fatal(err)
		}
		if len(entries) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d fills still hold spool files after 30s", len(entries))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wantNoLocalBlobs fails if e's data dir holds a file outside the CA: in
// azure mode, blobs live only in the container.
func (e *env) wantNoLocalBlobs() { e.wantFilesOnlyIn("ca") }

// wantFilesOnlyIn fails if e's data dir holds a file outside the top-level
// directories dirs.
func (e *env) wantFilesOnlyIn(dirs ...string) {
	e.t.Helper()
	filepath.WalkDir(e.dataDir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(e.dataDir, path)
		top, _, _ := strings.Cut(rel, string(filepath.Separator))
		if !d.IsDir() && !slices.Contains(dirs, top) {
			e.t.Errorf("%s is under the data dir", rel)
		}
		return nil
	})
}

func TestBackendPullTwice(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		img := e.up.RandomImage(t, 3, 256<<10)
		e.up.Push(t, "team/app", "v1", img)
		want, _ := img.Digest()
		if got := e.pull("team/app", "v1"); got != want {
			t.Fatalf("first pull digest %s; want %s", got, want)
		}
		if got := e.up.Count("GET blob"); got != 4 {
			t.Fatalf("first pull: %d upstream blob GETs; want 4 (config + 3 layers)", got)
		}
		e.waitCommitted()
		e.up.ResetCounts()
		if got := e.pull("team/app", "v1"); got != want {
			t.Fatalf("second pull digest %s; want %s", got, want)
		}
		if got := e.up.Count("GET blob") + e.up.Count("GET manifest") + e.up.Count("HEAD manifest"); got != 0 {
			t.Fatalf("second pull within the TTL: %d upstream blob/manifest requests; want 0", got)
		}
	})
}

func TestBackendHitHeadAndRange(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		d, full := oneLayer(t, e, 1<<20)
		c := e.client()
		path := "/v2/r/blobs/" + d.String()
		e.get(c, "GET", path)
		e.waitCommitted()
		e.up.ResetCounts()
		resp, body := e.get(c, "HEAD", path)
		if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(full)) || len(body) != 0 {
			t.Fatalf("HEAD: status %d length %d body %d; want 200, %d, 0", resp.StatusCode, resp.ContentLength, len(body), len(full))
		}
		for _, r := range []struct{ header, want string }{
			{"bytes=100-199", "bytes 100-199/"},
			{"bytes=-1000", fmt.Sprintf("bytes %d-%d/", len(full)-1000, len(full)-1)},
			{"bytes=700000-", fmt.Sprintf("bytes 700000-%d/", len(full)-1)},
		} {
			resp, body = e.get(c, "GET", path, "Range", r.header)
			got := resp.Header.Get("Content-Range")
			if resp.StatusCode != http.StatusPartialContent || got != r.want+fmt.Sprint(len(full)) {
				t.Fatalf("Range %s: %d, Content-Range %q", r.header, resp.StatusCode, got)
			}
			var first int
			fmt.Sscanf(got, "bytes %d-", &first)
			if !bytes.Equal(body, full[first:first+len(body)]) || first+len(body) > len(full) {
				t.Fatalf("Range %s: wrong bytes", r.header)
			}
		}
		resp, _ = e.get(c, "GET", path, "Range", fmt.Sprintf("bytes=%d-", len(full)))
		if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
			t.Fatalf("Range past the end: %d; want 416", resp.StatusCode)
		}
		if n := e.up.Total(); n != 0 {
			t.Fatalf("HEAD and Range on a cached blob: %d upstream requests; want 0", n)
		}
	})
}

func TestBackendRestartThenHit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		img := e.up.RandomImage(t, 2, 300<<10)
		e.up.Push(t, "r", "t", img)
		e.pull("r", "t")
		e.restart()
		e.up.ResetCounts()
		e.pull("r", "t")
		if n := e.up.Count("GET blob") + e.up.Count("GET manifest"); n != 0 {
			t.Fatalf("after restart: %d upstream blob and manifest GETs; want 0", n)
		}
	})
}

func TestBackendConcurrentMisses(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		d, _ := oneLayer(t, e, 4<<20)
		c := e.client()
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() { getVerified(t, c, "https://"+e.up.Host+"/v2/r/blobs/"+d.String(), d) })
		}
		wg.Wait()
		if got := e.up.Count("GET blob"); got != 1 {
			t.Fatalf("8 concurrent GETs of one blob made %d upstream GETs; want 1", got)
		}
	})
}

// getVerified GETs url with c and checks that the body hashes to d.
func getVerified(t *testing.T, c *http.Client, url string, d v1.Hash) {
	resp, err := c.Get(url)
	if err != nil {
		t.Error(err)
		return
	}
	defer resp.Body.Close()
	got, _, err := v1.SHA256(resp.Body)
	if resp.StatusCode != http.StatusOK || err != nil || got != d {
		t.Errorf("GET %s: %s, digest %s, %v; want 200 and %s", url, resp.Status, got, err, d)
	}
}
