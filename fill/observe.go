package fill

import (
	"context"
	"errors"
	"time"

	"github.com/regproxy/regproxy/cachestore"
)

// Observer hears how fills go, for metrics; the package itself keeps no
// figures. A Group calls it from fill goroutines with no lock held, so its
// methods must be quick and safe for concurrent use.
type Observer interface {
	// FillStarted is called when a fill begins: it is about to try its
	// callers' fetches. A fill that finds the blob already committed never
	// begins.
	FillStarted()
	// FillEnded is called once for every fill that began, when it has
	// ended: d after it began, with joiners callers that read it although
	// another caller's fetch started it. cause is "" when the fill
	// delivered the verified blob (committed, or relayed without caching
	// when the spool took no more), else one of the Cause values.
	FillEnded(d time.Duration, joiners int, cause string)
}

// Causes of a failed fill, as Observer.FillEnded gets them.
const (
	// CauseRefused: upstream answered every waiting caller's fetch with
	// something other than the blob (a 401, 404 or 429), which went back
	// to that caller.
	CauseRefused = "refused"
	// CauseUpstream: upstream was unreachable, or cut the stream and
	// could not be resumed, or sent more than it announced.
	CauseUpstream = "upstream"
	// CauseStalled: upstream sent nothing for the stall timeout, and the
	// fill could not be resumed.
	CauseStalled = "stalled"
	// CauseTimeout: the fill ran out of its whole time limit.
	CauseTimeout = "timeout"
	// CauseDigest: the bytes did not match the digest.
	CauseDigest = "digest_mismatch"
	// CauseStore: the verified blob could not be committed to the store
	// (its readers got it all the same).
	CauseStore = "store"
	// CauseNoReaders: the fill relayed through memory (the spool took no
	// more) and every reader left.
	CauseNoReaders = "no_readers"
	// CauseShutdown: the Group was closed.
	CauseShutdown = "shutdown"
)

// Causes lists every cause FillEnded may report, for metrics that want
// each at zero from the start.
var Causes = []string{CauseRefused, CauseUpstream, CauseStalled, CauseTimeout,
	CauseDigest, CauseStore, CauseNoReaders, CauseShutdown}

// observeStart tells the observer that f begins and returns when.
func (f *Fill) observeStart() time.Time {
	if f.group.obs != nil {
		f.group.obs.FillStarted()
	}
	return time.Now()
}

// observeEnd tells the observer that f, begun at began, ended with err.
// It runs on the fill's goroutine, which alone sets verified.
func (f *Fill) observeEnd(began time.Time, err error) {
	if f.group.obs == nil {
		return
	}
	f.mu.Lock()
	joiners := f.joiners
	f.mu.Unlock()
	f.group.obs.FillEnded(time.Since(began), joiners, f.causeOf(err))
}

// causeOf names why a fill failed, or "" if it did not.
func (f *Fill) causeOf(err error) string {
	switch {
	case err == nil:
		return ""
	case f.verified:
		return CauseStore
	case f.group.ctx.Err() != nil:
		return CauseShutdown
	case errors.Is(err, ErrNoFill) || errors.As(err, new(*Refused)):
		return CauseRefused
	case errors.Is(err, context.DeadlineExceeded):
		return CauseTimeout
	case errors.Is(err, errStalled):
		return CauseStalled
	case errors.Is(err, cachestore.ErrDigestMismatch):
		return CauseDigest
	case errors.Is(err, errNoReaders):
		return CauseNoReaders
	}
	return CauseUpstream
}
