package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regproxy/regproxy/internal/testupstream"
	"github.com/regproxy/regproxy/proxy"
)

// withStallTimeout restarts e's proxy with --fill-stall-timeout d.
func withStallTimeout(e *env, d time.Duration) {
	e.stop()
	e.configure = func(cfg *proxy.Config) { cfg.FillStallTimeout = d }
	e.start()
}

// rangeOnly applies fault to blob requests with a Range (resumes) only.
func rangeOnly(fault testupstream.Fault) testupstream.Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		return r.Header.Get("Range") != "" && fault(w, r)
	}
}

// either tries the faults in order.
func either(faults ...testupstream.Fault) testupstream.Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		for _, f := range faults {
			if f(w, r) {
				return true
			}
		}
		return false
	}
}

// TestStalledBlobIsResumed checks --fill-stall-timeout: an upstream that
// stops sending after the headers and some bytes costs the clients the
// stall timeout, not the fill timeout, and the fill resumes with a Range.
func TestStalledBlobIsResumed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	withStallTimeout(e, 300*time.Millisecond)
	d, want := oneLayer(t, e, 200<<10)
	e.up.SetFault(firstBlobGET(testupstream.StallBlobAfter(50 << 10)))
	start := time.Now()
	got, err := fetchBlob(e, e.client(), d)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("blob stalled upstream at 50 KiB: %d bytes, %v; want the whole blob", len(got), err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %v; want about the stall timeout", took)
	}
	if n := e.up.Count("GET blob"); n != 2 {
		t.Fatalf("%d upstream blob GETs; want 2 (the stalled one and one Range resume)", n)
	}
	assertCachedOnce(t, e, e.client(), d, want)
}

func TestStalledBlobWithoutResumeCutsTheClient(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	withStallTimeout(e, 200*time.Millisecond)
	d, want := oneLayer(t, e, 200<<10)
	var attempts atomic.Int32
	e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET blob" || attempts.Add(1) > 4 { // the first GET and three resumes
			return false
		}
		return testupstream.StallBlobAfter(10<<10)(w, r)
	})
	start := time.Now()
	if got, err := fetchBlob(e, e.client(), d); err == nil {
		t.Fatalf("client got %d bytes and no error from a stalled fill; want the connection cut", len(got))
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the client was held %v; want a few stall timeouts", took)
	}
	assertNoBlobFiles(t, e)
	if got, err := fetchBlob(e, e.client(), d); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("retry: %d bytes, %v", len(got), err)
	}
}

// TestShortRangeIsResumedAgain checks that a resume answered with a
// correct 206 for less than the rest is resumed again, not taken for a
// blob of the wrong size.
func TestShortRangeIsResumedAgain(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	d, want := oneLayer(t, e, 150<<10)
	e.up.SetFault(either(firstBlobGET(testupstream.CutBlobAfter(50<<10)), testupstream.ShortRanges(40<<10)))
	got, err := fetchBlob(e, e.client(), d)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("cut, then 40 KiB ranges: %d bytes, %v; want the whole blob", len(got), err)
	}
	if n := e.up.Count("GET blob"); n != 4 {
		t.Fatalf("%d upstream blob GETs; want 4 (the cut one and three short ranges)", n)
	}
	assertCachedOnce(t, e, e.client(), d, want)
}

// TestBadResumeFailsCleanly checks resumes that upstream answers with
// something other than the rest of the blob: the client is cut, nothing is
// cached, and a retry gets the blob.
func TestBadResumeFailsCleanly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		resume testupstream.Fault
	}{
		{"200 to a range", func(w http.ResponseWriter, r *http.Request) bool {
			r.Header.Del("Range")
			return false // the registry answers the whole blob
		}},
		{"206 at the wrong offset", func(w http.ResponseWriter, r *http.Request) bool {
			var first int64
			fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &first)
			r.Header.Set("Range", fmt.Sprintf("bytes=%d-", first-1000))
			return false
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			d, want := oneLayer(t, e, 100<<10)
			var resumes atomic.Int32
			e.up.SetFault(either(firstBlobGET(testupstream.CutBlobAfter(30<<10)), rangeOnly(func(w http.ResponseWriter, r *http.Request) bool {
				if resumes.Add(1) > 1 {
					return false
				}
				return tc.resume(w, r)
			})))
			if got, err := fetchBlob(e, e.client(), d); err == nil {
				t.Fatalf("client got %d bytes and no error; want the connection cut", len(got))
			}
			assertNoBlobFiles(t, e)
			e.up.SetFault(nil)
			if got, err := fetchBlob(e, e.client(), d); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("retry: %d bytes, %v", len(got), err)
			}
			assertCachedOnce(t, e, e.client(), d, want)
		})
	}
}

// TestCorruptBlobCutsEveryJoiner checks that bytes that do not match their
// digest reach no client as a complete blob: the one whose request started
// the fill and the one that joined it are both cut, and nothing is cached.
func TestCorruptBlobCutsEveryJoiner(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	d, want := oneLayer(t, e, 256<<10)
	bad := bytes.Clone(want)
	bad[len(bad)/2] ^= 1
	e.up.SetFault(firstBlobGET(slowBlob(bad, 20, 20*time.Millisecond)))
	path := "/v2/r/blobs/" + d.String()
	leader := startSlowFill(t, e, path)
	joined, err := e.client().Get("https://" + e.up.Host + path)
	if err != nil {
		t.Fatal(err)
	}
	defer joined.Body.Close()
	for i, resp := range []*http.Response{leader, joined} {
		if got, err := io.ReadAll(resp.Body); err == nil {
			t.Errorf("client %d got %d bytes and a clean end; want the connection cut", i, len(got))
		}
	}
	if n := e.up.Count("GET blob"); n != 1 {
		t.Errorf("%d upstream blob GETs; want 1 (the joiner joined)", n)
	}
	assertNoBlobFiles(t, e)
}

// TestResumeAfterTheClientTokenExpired checks that a resume whose client
// token upstream no longer accepts (Docker Hub's last five minutes, less
// than a large layer may take) is made with regproxy's own credentials: an
// anonymous token here.
func TestResumeAfterTheClientTokenExpired(t *testing.T) {
	t.Parallel()
	e := newHubEnv(t, nil)
	img := e.up.RandomImage(t, 1, 200<<10)
	e.up.Push(t, "public/app", "v1", img)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	want, _ := io.ReadAll(rc)
	rc.Close()
	token := e.token(t, nil, "public/app")
	var cut atomic.Bool
	e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET cdn" || !cut.CompareAndSwap(false, true) {
			return false
		}
		e.up.ExpireTokens() // while the first download runs
		return testupstream.CutBlobAfter(50<<10)(w, r)
	})
	req, _ := http.NewRequest("GET", "https://"+e.up.Host+"/v2/public/app/blobs/"+d.String(), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := e.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || !bytes.Equal(got, want) {
		t.Fatalf("blob cut after the client's token expired: status %d, %d bytes, %v; want the whole blob", resp.StatusCode, len(got), err)
	}
	if n := e.up.Count("GET cdn"); n != 2 {
		t.Fatalf("%d CDN GETs; want 2 (the cut one and the resume)", n)
	}
}
