package fill

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// Fetch opens blob bytes upstream from offset: the whole blob for 0, the
// rest of it to resume a cut stream. The fill calls it under a context of
// its own (detached from every client, ended by the fill's timeout or a
// stall) and reads the body under that context. An answer that is not the
// blob is returned as a *Refused. For a resume, the body must start exactly
// at offset; it may end before the blob does, and is then resumed again.
type Fetch func(ctx context.Context, offset int64) (Body, error)

// Body is an upstream stream a Fetch opened. The fill closes it.
type Body struct {
	io.ReadCloser
	// Size is the length of the whole blob (not of this stream, for a
	// resume), or -1 when upstream announced none.
	Size int64
}

// Refused is upstream's answer when it is not the blob: a 401 challenge, a
// 404. It goes to the caller whose Fetch got it, who relays it to its
// client; callers that were waiting for the same fill try their own Fetch.
type Refused struct {
	Status int
	Header map[string][]string
	Body   []byte // bounded by the Fetch that read it
}

func (r *Refused) Error() string { return fmt.Sprintf("fill: upstream answered status %d", r.Status) }

// Source says where the bytes of a Blob come from.
type Source int

const (
	// Hit is the committed entry in the store.
	Hit Source = iota
	// Led is a fill that the caller's own Fetch started: upstream's answer
	// to the caller is its proof of access.
	Led
	// Joined is a fill that another caller's Fetch started.
	Joined
)

func (s Source) String() string {
	switch s {
	case Hit:
		return "hit"
	case Led:
		return "led"
	case Joined:
		return "joined"
	}
	return fmt.Sprintf("Source(%d)", int(s))
}

// Blob is a reader of a blob from byte 0, as Do hands it back. Reads of a
// fill in progress block until bytes arrive; the last byte comes only once
// the digest is verified, and a fill that fails fails every Read. Close it.
type Blob struct {
	io.ReadSeekCloser
	// Size is the blob's length, or -1 when upstream announced none.
	Size   int64
	Source Source
}

// ErrNoFill is returned by Do with a nil Fetch when the store lacks the blob
// and no fill of it is running, or every fetch of the one that was has been
// refused.
var ErrNoFill = errors.New("fill: blob neither cached nor being filled")

// errInStore tells waiters that the store had the blob after all (a fill
// committed it just before theirs registered): Do looks there again.
var errInStore = errors.New("fill: blob is in the store")

// maxLookups bounds how often Do looks in the store again after a fill
// found the blob there, should it vanish in between (a delete).
const maxLookups = 3

// Do returns a reader of blob d: the committed entry if the store has it,
// else the fill in progress for d, else a new fill that runs fetch. A fetch
// error goes to the caller whose fetch produced it; a *Refused one makes the
// fill try the fetch of the next caller waiting for it, so that each caller
// gets either the blob or upstream's answer to its own request. With a nil
// fetch, Do never starts a fill and returns ErrNoFill when there is none to
// join. ctx bounds only the caller's wait, never a fill.
func (g *Group) Do(ctx context.Context, d digest.Digest, fetch Fetch) (*Blob, error) {
	for range maxLookups {
		if b := g.open(ctx, d); b != nil {
			return b, nil
		}
		b, w, err := g.join(ctx, d, fetch)
		if w != nil {
			b, err = w.wait(ctx)
		}
		if !errors.Is(err, errInStore) {
			return b, err
		}
	}
	return nil, fmt.Errorf("fill %s: the store has the blob but it cannot be opened", d)
}

// open returns the committed entry of d, or nil.
func (g *Group) open(ctx context.Context, d digest.Digest) *Blob {
	r, err := g.store.Open(ctx, cachestore.BlobKey(d))
	if err != nil {
		if !errors.Is(err, cachestore.ErrNotFound) {
			g.log.Warn("cache read failed; fetching upstream", "digest", d, "err", err)
		}
		return nil
	}
	return &Blob{ReadSeekCloser: r, Size: r.Size(), Source: Hit}
}

// join joins the fill of d: at once if it streams, as a waiter if it is
// still looking for a fetch that upstream answers with the blob. Without a
// fill to join it registers a new one, with fetch as its first candidate.
func (g *Group) join(ctx context.Context, d digest.Digest, fetch Fetch) (*Blob, *waiter, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, nil, ErrClosed
	}
	if f := g.fills[d]; f != nil {
		if b, w, ok := f.join(ctx, fetch); ok {
			return b, w, nil
		}
		// A fill that failed, or relays and has let go of bytes a new
		// reader needs: it runs on for its readers, out of the map.
	}
	if fetch == nil {
		return nil, nil, ErrNoFill
	}
	f := newFill(g, ctx, d)
	w := f.addWaiterLocked(ctx, fetch) // no one else sees f yet
	g.fills[d] = f
	g.wg.Add(1)
	go f.run()
	return nil, w, nil
}

// waiter is a caller waiting for a fill to start.
type waiter struct {
	fill  *Fill
	ctx   context.Context // the caller's: it bounds the waits of its reader
	fetch Fetch           // nil: the caller only joins
	res   chan result     // gets exactly one result, unless the caller left first
	gone  bool            // the caller stopped waiting; guarded by fill.mu
}

type result struct {
	b   *Blob
	err error
}

// wait returns the waiter's result, or ctx's error. A result that arrives
// after the caller left is discarded, its reader closed.
func (w *waiter) wait(ctx context.Context) (*Blob, error) {
	select {
	case r := <-w.res:
		return r.b, r.err
	case <-ctx.Done():
	}
	w.fill.mu.Lock()
	w.gone = true
	w.fill.mu.Unlock()
	select {
	case r := <-w.res:
		if r.b != nil {
			r.b.Close()
		}
	default:
	}
	return nil, ctx.Err()
}
