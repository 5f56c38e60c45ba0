package fill_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/fill"
)

// stallingReader returns n bytes of b and then hangs until ctx ends, like
// an upstream that stops sending after the headers and some bytes.
type stallingReader struct {
	ctx context.Context
	b   []byte
	n   int
}

func (s *stallingReader) Read(p []byte) (int, error) {
	if s.n == 0 {
		<-s.ctx.Done()
		return 0, s.ctx.Err()
	}
	k := copy(p, s.b[:min(len(s.b), s.n)])
	s.b, s.n = s.b[k:], s.n-k
	if len(s.b) == 0 {
		return k, io.EOF
	}
	return k, nil
}

// upstream is a scripted Fetch: the i-th call gets the i-th behaviour, and
// the offsets asked for are recorded.
type upstream struct {
	blob    []byte
	script  []func(ctx context.Context, off int64) (fill.Body, error)
	mu      sync.Mutex
	offsets []int64
}

func (u *upstream) fetch(ctx context.Context, off int64) (fill.Body, error) {
	u.mu.Lock()
	i := len(u.offsets)
	u.offsets = append(u.offsets, off)
	u.mu.Unlock()
	if i < len(u.script) {
		return u.script[i](ctx, off)
	}
	return fill.Body{ReadCloser: io.NopCloser(bytes.NewReader(u.blob[off:])), Size: int64(len(u.blob))}, nil
}

func (u *upstream) calls() []int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.offsets)
}

// stallAfter serves n bytes from off and then hangs.
func (u *upstream) stallAfter(n int) func(context.Context, int64) (fill.Body, error) {
	return func(ctx context.Context, off int64) (fill.Body, error) {
		return fill.Body{ReadCloser: io.NopCloser(&stallingReader{ctx: ctx, b: u.blob[off:], n: n}), Size: int64(len(u.blob))}, nil
	}
}

// shortAfter serves n bytes from off and then ends cleanly, as a 206 that
// answers less of the range than was asked for.
func (u *upstream) shortAfter(n int) func(context.Context, int64) (fill.Body, error) {
	return func(_ context.Context, off int64) (fill.Body, error) {
		return fill.Body{ReadCloser: io.NopCloser(bytes.NewReader(u.blob[off : off+int64(n)])), Size: int64(len(u.blob))}, nil
	}
}

func stallGroup(t *testing.T, maxResumes int) (*fill.Group, cachestore.Store) {
	store := cachestore.NewMemory()
	return newGroupConfig(t, fill.Config{Store: store, MaxResumes: maxResumes,
		Timeout: time.Hour, StallTimeout: time.Minute}), store
}

// TestStallEndsTheAttemptAndResumes checks --fill-stall-timeout: an
// upstream that stops sending costs its readers a minute, not the fill's
// hour, and the fill goes on from where it stalled.
func TestStallEndsTheAttemptAndResumes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, store := stallGroup(t, 3)
		blob, d := randomBlob(t, 10_000)
		up := &upstream{blob: blob}
		up.script = append(up.script, up.stallAfter(4000))
		start := time.Now()
		r := do(t, g, t.Context(), d, up.fetch, fill.Led)
		joiner := do(t, g, t.Context(), d, never(t), fill.Joined)
		for i, r := range []io.Reader{r, joiner} {
			if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("reader %d: %d bytes, %v", i, len(got), err)
			}
		}
		if took := time.Since(start); took != time.Minute {
			t.Errorf("readers waited %v; want the stall timeout, 1m", took)
		}
		if want := []int64{0, 4000}; !slices.Equal(up.calls(), want) {
			t.Errorf("fetched at %v; want %v", up.calls(), want)
		}
		synctest.Wait()
		if !isCommitted(store, d) {
			t.Error("resumed blob not committed")
		}
	})
}

func TestStallWithoutResumeFailsAfterTheStallTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, store := stallGroup(t, -1)
		blob, d := randomBlob(t, 10_000)
		up := &upstream{blob: blob}
		up.script = append(up.script, up.stallAfter(4000))
		start := time.Now()
		r := do(t, g, t.Context(), d, up.fetch, fill.Led)
		if _, err := io.ReadAll(r); err == nil {
			t.Fatal("a stalled fill completed")
		}
		if took := time.Since(start); took != time.Minute {
			t.Errorf("the reader was cut after %v; want the stall timeout, 1m", took)
		}
		synctest.Wait()
		if isCommitted(store, d) {
			t.Error("stalled fill committed")
		}
	})
}

func TestStallBeforeTheAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, _ := stallGroup(t, 3)
		_, d := randomBlob(t, 10)
		start := time.Now()
		_, err := g.Do(t.Context(), d, func(ctx context.Context, _ int64) (fill.Body, error) {
			<-ctx.Done() // no headers, ever
			return fill.Body{}, ctx.Err()
		})
		if err == nil || time.Since(start) != time.Minute {
			t.Fatalf("Do of an upstream that never answers: %v after %v; want an error after 1m", err, time.Since(start))
		}
	})
}

// TestShortRangeIsResumedAgain checks that a resume answered with less
// than the rest of the blob, correctly, is resumed again rather than taken
// for a blob of the wrong size.
func TestShortRangeIsResumedAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, store := stallGroup(t, 3)
		blob, d := randomBlob(t, 10_000)
		up := &upstream{blob: blob}
		up.script = append(up.script, up.shortAfter(3000), up.shortAfter(3000))
		r := do(t, g, t.Context(), d, up.fetch, fill.Led)
		if got, err := readAll(t, r); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("read %d bytes, %v; want the blob", len(got), err)
		}
		if want := []int64{0, 3000, 6000}; !slices.Equal(up.calls(), want) {
			t.Errorf("fetched at %v; want %v", up.calls(), want)
		}
		synctest.Wait()
		if !isCommitted(store, d) {
			t.Error("not committed")
		}
	})
}

func TestResumeThatFailsEndsTheFill(t *testing.T) {
	for _, tc := range []struct {
		name   string
		resume func(blob []byte) func(context.Context, int64) (fill.Body, error)
	}{
		{"another size", func(blob []byte) func(context.Context, int64) (fill.Body, error) {
			return func(_ context.Context, off int64) (fill.Body, error) {
				return fill.Body{ReadCloser: io.NopCloser(bytes.NewReader(blob[off:])), Size: int64(len(blob)) + 1}, nil
			}
		}},
		{"refused", func([]byte) func(context.Context, int64) (fill.Body, error) {
			return func(context.Context, int64) (fill.Body, error) {
				return fill.Body{}, &fill.Refused{Status: 401}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g, store := stallGroup(t, 3)
				blob, d := randomBlob(t, 10_000)
				up := &upstream{blob: blob}
				up.script = append(up.script, up.shortAfter(3000), tc.resume(blob))
				r := do(t, g, t.Context(), d, up.fetch, fill.Led)
				if _, err := readAll(t, r); err == nil {
					t.Fatal("read succeeded; want the failed resume reported")
				} else if errors.Is(err, io.EOF) {
					t.Fatalf("read error %v", err)
				}
				synctest.Wait()
				if isCommitted(store, d) {
					t.Error("committed")
				}
			})
		})
	}
}
