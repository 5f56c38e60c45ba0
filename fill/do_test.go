package fill_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/fill"
)

// refuse is a Fetch that upstream answers with status after a round trip.
func refuse(status int, calls *atomic.Int32) fill.Fetch {
	return func(context.Context, int64) (fill.Body, error) {
		calls.Add(1)
		time.Sleep(10 * time.Millisecond)
		return fill.Body{}, &fill.Refused{Status: status, Header: map[string][]string{"Www-Authenticate": {"Bearer"}}}
	}
}

func TestRefusalGoesToItsCallerAndWaitersFetchForThemselves(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := cachestore.NewMemory()
		g := newGroup(t, store, 0)
		blob, d := randomBlob(t, 1000)
		var refused atomic.Int32
		anonymous := make(chan error, 1)
		go func() {
			_, err := g.Do(t.Context(), d, refuse(401, &refused))
			anonymous <- err
		}()
		synctest.Wait() // the anonymous fetch is under way: the next caller waits for it
		b := do(t, g, t.Context(), d, whole(bytes.NewReader(blob), len(blob)), fill.Led)
		var r *fill.Refused
		if err := <-anonymous; !errors.As(err, &r) || r.Status != 401 || r.Header["Www-Authenticate"] == nil {
			t.Fatalf("the refused caller got %v; want its own 401 with the challenge", err)
		}
		if got, err := readAll(t, b); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("the waiter that fetched for itself read %d bytes, %v", len(got), err)
		}
		if n := refused.Load(); n != 1 {
			t.Fatalf("the refused fetch ran %d times; want 1", n)
		}
	})
}

// TestAuthorizedCallerAmongRefusedOnes is issue 9, item 6: anonymous
// requests for a private blob keep starting fills that upstream refuses; a
// caller with credentials who arrives among them must still get the blob,
// however many refusals come before and after it.
func TestAuthorizedCallerAmongRefusedOnes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, cachestore.NewMemory(), 0)
		blob, d := randomBlob(t, 1000)
		var refused atomic.Int32
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { // a stream of anonymous requests, each refused
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				go g.Do(t.Context(), d, refuse(401, &refused))
				time.Sleep(3 * time.Millisecond)
			}
		}()
		time.Sleep(20 * time.Millisecond)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		b, err := g.Do(ctx, d, whole(bytes.NewReader(blob), len(blob)))
		close(stop)
		<-done
		if err != nil {
			t.Fatalf("the authorized caller got %v after %d refusals; want the blob", err, refused.Load())
		}
		defer b.Close()
		if got, err := readAll(t, b); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("read %d bytes, %v", len(got), err)
		}
		synctest.Wait()
	})
}

func TestNetworkErrorGoesToEveryWaiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, cachestore.NewMemory(), 0)
		_, d := randomBlob(t, 10)
		down := errors.New("connection refused")
		var calls atomic.Int32
		fetch := func(context.Context, int64) (fill.Body, error) {
			calls.Add(1)
			time.Sleep(10 * time.Millisecond)
			return fill.Body{}, down
		}
		errs := make(chan error, 3)
		for range 3 {
			go func() { _, err := g.Do(t.Context(), d, fetch); errs <- err }()
		}
		for range 3 {
			if err := <-errs; !errors.Is(err, down) {
				t.Errorf("waiter got %v; want the upstream error", err)
			}
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("%d fetches; want 1: an unreachable upstream is unreachable for everyone", n)
		}
	})
}

func TestNilFetchOnlyJoins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, cachestore.NewMemory(), 0)
		blob, d := randomBlob(t, 1000)
		if _, err := g.Do(t.Context(), d, nil); !errors.Is(err, fill.ErrNoFill) {
			t.Fatalf("Do(nil) without a fill: %v; want ErrNoFill", err)
		}
		// A caller without a fetch waits for a fill to start, and gets
		// ErrNoFill when every fetch was refused.
		var refused atomic.Int32
		go g.Do(t.Context(), d, refuse(404, &refused))
		synctest.Wait()
		if _, err := g.Do(t.Context(), d, nil); !errors.Is(err, fill.ErrNoFill) {
			t.Fatalf("Do(nil) on a refused fill: %v; want ErrNoFill", err)
		}
		pr, pw := io.Pipe()
		do(t, g, t.Context(), d, whole(pr, len(blob)), fill.Led)
		b := do(t, g, t.Context(), d, nil, fill.Joined)
		if b.Size != int64(len(blob)) {
			t.Fatalf("Size of a joined fill = %d; want %d", b.Size, len(blob))
		}
		pw.Close()
	})
}

func TestCallerThatLeavesWhileWaitingLetsGo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, cachestore.NewMemory(), 0)
		blob, d := randomBlob(t, 1000)
		release := make(chan struct{})
		slow := func(context.Context, int64) (fill.Body, error) {
			<-release
			return fill.Body{ReadCloser: io.NopCloser(bytes.NewReader(blob)), Size: int64(len(blob))}, nil
		}
		ctx, cancel := context.WithCancel(t.Context())
		errs := make(chan error, 2)
		go func() { _, err := g.Do(ctx, d, slow); errs <- err }()
		synctest.Wait()
		go func() { _, err := g.Do(ctx, d, never(t)); errs <- err }()
		synctest.Wait()
		cancel()
		for range 2 {
			if err := <-errs; !errors.Is(err, context.Canceled) {
				t.Fatalf("Do of a caller that left: %v; want context.Canceled", err)
			}
		}
		close(release) // the fill goes on for the cache, its readers closed
		synctest.Wait()
		do(t, g, t.Context(), d, never(t), fill.Hit)
	})
}
