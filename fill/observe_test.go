package fill_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/fill"
)

// observer records what a Group tells its Observer.
type observer struct {
	mu      sync.Mutex
	started int
	ended   []ending
	done    chan struct{} // gets a value per ended fill
}

type ending struct {
	joiners int
	cause   string
}

func newObserver() *observer { return &observer{done: make(chan struct{}, 16)} }

func (o *observer) FillStarted() {
	o.mu.Lock()
	o.started++
	o.mu.Unlock()
}

func (o *observer) FillEnded(d time.Duration, joiners int, cause string) {
	o.mu.Lock()
	o.ended = append(o.ended, ending{joiners, cause})
	o.mu.Unlock()
	o.done <- struct{}{}
}

// wait returns the one ending of the one fill the test ran.
func (o *observer) wait(t *testing.T) ending {
	t.Helper()
	select {
	case <-o.done:
	case <-time.After(10 * time.Second):
		t.Fatal("no fill ended in 10s")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.started != 1 || len(o.ended) != 1 {
		t.Fatalf("%d fills started, %d ended; want 1 and 1", o.started, len(o.ended))
	}
	return o.ended[0]
}

// blocked is a Fetch that waits for its context to end.
func blocked(ctx context.Context, _ int64) (fill.Body, error) {
	<-ctx.Done()
	return fill.Body{}, ctx.Err()
}

// failCommit is a store whose writers never commit.
type failCommit struct{ cachestore.Store }

func (s failCommit) Create(ctx context.Context, key string, opts cachestore.Options) (cachestore.Writer, error) {
	w, err := s.Store.Create(ctx, key, opts)
	return failingWriter{w}, err
}

type failingWriter struct{ cachestore.Writer }

func (failingWriter) Commit(context.Context, digest.Digest) error { return errors.New("disk on fire") }

// TestObserverCauses: every fill that begins ends once, with the callers
// that joined it and why it failed.
func TestObserverCauses(t *testing.T) {
	t.Parallel()
	blob, d := randomBlob(t, 64<<10)
	tests := []struct {
		name  string
		cfg   fill.Config
		fetch fill.Fetch
		close bool // close the Group while the fill waits
		want  string
	}{
		{name: "committed", fetch: whole(bytes.NewReader(blob), len(blob)), want: ""},
		{name: "refused", want: fill.CauseRefused, fetch: func(context.Context, int64) (fill.Body, error) {
			return fill.Body{}, &fill.Refused{Status: 404}
		}},
		{name: "unreachable", want: fill.CauseUpstream, fetch: func(context.Context, int64) (fill.Body, error) {
			return fill.Body{}, errors.New("connection refused")
		}},
		{name: "wrong bytes", want: fill.CauseDigest, fetch: whole(bytes.NewReader(bytes.Repeat([]byte{1}, len(blob))), len(blob))},
		{name: "stalled", want: fill.CauseStalled, cfg: fill.Config{StallTimeout: 20 * time.Millisecond, MaxResumes: -1}, fetch: blocked},
		{name: "timeout", want: fill.CauseTimeout, cfg: fill.Config{Timeout: 20 * time.Millisecond}, fetch: blocked},
		{name: "shutdown", want: fill.CauseShutdown, close: true, fetch: blocked},
		{name: "commit fails", want: fill.CauseStore, cfg: fill.Config{Store: failCommit{cachestore.NewMemory()}},
			fetch: whole(bytes.NewReader(blob), len(blob))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			obs := newObserver()
			cfg := tc.cfg
			cfg.Observer = obs
			if cfg.Store == nil {
				cfg.Store = cachestore.NewMemory()
			}
			g := newGroupConfig(t, cfg)
			if tc.close {
				time.AfterFunc(20*time.Millisecond, g.Close)
			}
			if b, err := g.Do(context.Background(), d, tc.fetch); err == nil {
				io.Copy(io.Discard, b)
				b.Close()
			}
			if got := obs.wait(t); got != (ending{0, tc.want}) {
				t.Errorf("FillEnded(joiners %d, cause %q); want 0, %q", got.joiners, got.cause, tc.want)
			}
		})
	}
}

// TestObserverJoiners: callers that join a running fill are counted, the
// one whose fetch started it is not, and a hit starts no fill.
func TestObserverJoiners(t *testing.T) {
	t.Parallel()
	blob, d := randomBlob(t, 64<<10)
	obs := newObserver()
	g := newGroupConfig(t, fill.Config{Store: cachestore.NewMemory(), Observer: obs})
	pr, pw := io.Pipe()
	leader := do(t, g, context.Background(), d, whole(pr, len(blob)), fill.Led)
	joiners := []*fill.Blob{
		do(t, g, context.Background(), d, never(t), fill.Joined),
		do(t, g, context.Background(), d, nil, fill.Joined),
	}
	go func() { pw.Write(blob); pw.Close() }()
	for _, b := range append(joiners, leader) {
		if got, err := readAll(t, b); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("read %d bytes, %v", len(got), err)
		}
	}
	if got := obs.wait(t); got != (ending{2, ""}) {
		t.Errorf("FillEnded(joiners %d, cause %q); want 2, \"\"", got.joiners, got.cause)
	}
	do(t, g, context.Background(), d, never(t), fill.Hit)
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.started != 1 {
		t.Errorf("%d fills started after a hit; want still 1", obs.started)
	}
}
