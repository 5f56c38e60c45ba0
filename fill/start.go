package fill

import (
	"context"
	"errors"
	"fmt"
)

// start tries the waiters' fetches in arrival order until one returns the
// blob. A refusal goes to the waiter whose fetch got it; any other error
// (upstream unreachable, say) does not depend on who asks, and ends the
// fill for every waiter.
func (f *Fill) start() (Body, Fetch, error) {
	for {
		w := f.nextFetcher()
		if w == nil {
			return Body{}, nil, ErrNoFill
		}
		body, err := f.attempt(w.fetch, 0)
		if err == nil {
			f.begin(body.Size, w)
			return body, w.fetch, nil
		}
		f.mu.Lock()
		f.send(w, result{err: err})
		f.mu.Unlock()
		if !errors.As(err, new(*Refused)) {
			return Body{}, nil, err
		}
	}
}

// addWaiterLocked registers a caller waiting for the fill to start. mu
// must be held.
func (f *Fill) addWaiterLocked(ctx context.Context, fetch Fetch) *waiter {
	w := &waiter{fill: f, ctx: ctx, fetch: fetch, res: make(chan result, 1)}
	f.waiters = append(f.waiters, w)
	return w
}

// nextFetcher takes the first waiter that is still there and has a fetch.
// When there is none, the fill ends in the same step, so that no caller
// joins it in vain.
func (f *Fill) nextFetcher() *waiter {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, w := range f.waiters {
		if !w.gone && w.fetch != nil {
			f.waiters = append(f.waiters[:i:i], f.waiters[i+1:]...)
			return w
		}
	}
	f.ended = true
	return nil
}

// send gives w its result, unless its caller left. mu must be held.
func (f *Fill) send(w *waiter, r result) {
	if !w.gone {
		w.res <- r
	}
}

// end tells every waiter err and forgets the fill, which never started.
func (f *Fill) end(err error) {
	f.mu.Lock()
	f.ended = true
	for _, w := range f.waiters {
		f.send(w, result{err: err})
	}
	f.waiters = nil
	f.mu.Unlock()
	f.group.forget(f)
	f.cancel()
}

// join returns a reader of the fill, or a waiter for its start, or false
// when a new caller cannot use it. The caller holds the group's lock.
func (f *Fill) join(ctx context.Context, fetch Fetch) (*Blob, *waiter, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case !f.joinable():
		return nil, nil, false
	case !f.started:
		return nil, f.addWaiterLocked(ctx, fetch), true
	}
	return f.newBlob(ctx, Joined), nil, true
}

// joinable reports whether a new caller may use the fill: it has not
// ended without the blob, and a new reader can still read it from byte 0.
// mu must be held.
func (f *Fill) joinable() bool {
	if f.ended || (f.done && !f.verified) {
		return false
	}
	return f.win == nil || f.win.lo <= f.spooled
}

// begin records the size, opens the spool file (and starts staging it,
// for a store that does not import files) and hands every waiter a reader:
// the one whose fetch got the blob leads, the others joined.
func (f *Fill) begin(size int64, leader *waiter) {
	f.size = size
	file, err := f.createSpool()
	f.file = file
	if err != nil {
		f.stopSpooling(fmt.Errorf("create spool file: %w", err))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.started = true
	if f.file != nil && f.group.importer == nil {
		f.startStagerLocked()
	}
	if !leader.gone {
		f.send(leader, result{b: f.newBlob(leader.ctx, Led)})
	}
	for _, w := range f.waiters {
		if !w.gone {
			f.send(w, result{b: f.newBlob(w.ctx, Joined)})
		}
	}
	f.waiters = nil
}
