package proxy_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/internal/testupstream"
	"github.com/regproxy/regproxy/proxy"
)

// privateBlobs makes every blob request without auth a slow 401, as a
// private repository answers anonymous clients.
func privateBlobs(auth string) testupstream.Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		switch testupstream.Kind(r) {
		case "GET blob", "HEAD blob":
		default:
			return false
		}
		if r.Header.Get("Authorization") == auth {
			return false
		}
		time.Sleep(20 * time.Millisecond) // a round trip, during which others join
		w.Header().Set("WWW-Authenticate", `Bearer realm="https://auth.test/token"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	}
}

// slowOpen is a store on a busy disk: opening an entry takes a while.
type slowOpen struct{ *cachestore.Disk }

func (s slowOpen) Open(ctx context.Context, key string) (cachestore.Reader, error) {
	time.Sleep(20 * time.Millisecond)
	return s.Disk.Open(ctx, key)
}

// TestAuthorizedClientAmongRefusedAnonymousOnes is issue 9, item 6:
// anonymous clients keep asking for a private blob, and every fill they
// start is refused. A client with credentials that joins among them must
// still get the blob (it fetches with its own credentials when the fill it
// waited for is refused), and the anonymous clients must keep getting
// their 401, whether they asked upstream or joined the authorized fill.
func TestAuthorizedClientAmongRefusedAnonymousOnes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// A busy disk: every look into the cache takes a while, during which
	// another anonymous request may start a fill that will be refused.
	e.stop()
	e.configure = func(cfg *proxy.Config) { cfg.Store = slowOpen{cfg.Store.(*cachestore.Disk)} }
	e.start()
	const auth = "Bearer let-me-in"
	blobs := e.up.RandomImage(t, 5, 32<<10)
	e.up.Push(t, "r", "t", blobs)
	layers, _ := blobs.Layers()
	e.up.SetFault(privateBlobs(auth))
	for i, l := range layers {
		d, _ := l.Digest()
		rc, _ := l.Compressed()
		want, _ := io.ReadAll(rc)
		rc.Close()
		path := "/v2/r/blobs/" + d.String()

		stop := make(chan struct{})
		var wg sync.WaitGroup
		var anonymous, leaked atomic.Int32
		for range 8 { // anonymous clients, each asking until the authorized one is done
			wg.Go(func() {
				c := e.client()
				for n := 0; n < 100; n++ {
					select {
					case <-stop:
						return
					default:
					}
					resp, err := c.Get("https://" + e.up.Host + path)
					if err != nil {
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					anonymous.Add(1)
					if resp.StatusCode != http.StatusUnauthorized {
						leaked.Add(1)
					}
				}
			})
		}
		time.Sleep(50 * time.Millisecond) // the storm is under way
		resp, got := e.get(e.client(), "GET", path, "Authorization", auth)
		close(stop)
		wg.Wait()
		if resp.StatusCode != http.StatusOK || !bytes.Equal(got, want) {
			t.Fatalf("layer %d: the authorized client got %d with %d bytes among %d refused anonymous requests; want 200 and the blob",
				i, resp.StatusCode, len(got), anonymous.Load())
		}
		if n := leaked.Load(); n != 0 {
			t.Fatalf("layer %d: %d of %d anonymous requests got something other than 401", i, n, anonymous.Load())
		}
	}
}
