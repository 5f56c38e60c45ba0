package main

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// faults makes the bench's upstream misbehave at random, for the soak:
// blob responses cut at a random byte, bursts of time in which every
// request gets a 503, and slow responses (late headers, and a blob body
// at a crawl). Each fault is rare and short, so that regproxy can hide
// most of them (a cut fill resumes with a Range request; an expired tag is
// served stale) and most client requests succeed.
type faults struct {
	cutP       float64       // chance that a blob GET is cut at a random byte
	slowP      float64       // chance that a response is slow
	slowDelay  time.Duration // a slow response's headers wait up to this long
	slowRate   int64         // a slow blob body's bytes/s
	burstEvery time.Duration // mean time between 503 bursts (exponential)
	burstLen   time.Duration // how long each burst lasts

	mu         sync.Mutex // guards rng and the burst schedule
	rng        *rand.Rand
	burstStart time.Time // the current burst's start, or the next one's
	burstEnd   time.Time

	// What was injected, by kind.
	cuts, unavailable, slowed atomic.Int64
}

// soakFaults are the soak's fault rates.
func soakFaults() *faults {
	now := time.Now()
	return &faults{
		cutP: 0.05, slowP: 0.05, slowDelay: 500 * time.Millisecond, slowRate: 4e6,
		burstEvery: 8 * time.Second, burstLen: 250 * time.Millisecond,
		rng:      rand.New(rand.NewPCG(uint64(now.UnixNano()), 0x5eed)),
		burstEnd: now,
	}
}

// faultPlan is what one request gets.
type faultPlan struct {
	unavailable bool          // answer 503 at once
	delay       time.Duration // wait before answering
	rate        int64         // throttle a blob body to this many bytes/s; 0: as the blob says
	cutAt       float64       // cut a blob body after this fraction of the blob; 0: never
}

// plan draws the faults of one request. Only a blob GET is cut or
// throttled; any request may fall in a burst or be late.
func (f *faults) plan(blobGET bool) faultPlan {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inBurst(time.Now()) {
		return faultPlan{unavailable: true}
	}
	var p faultPlan
	if f.rng.Float64() < f.slowP {
		p.delay = time.Duration(f.rng.Int64N(int64(f.slowDelay)))
		if blobGET {
			p.rate = f.slowRate
		}
	}
	if blobGET && f.rng.Float64() < f.cutP {
		p.cutAt = f.rng.Float64()
	}
	return p
}

// inBurst reports whether now falls in a 503 burst, scheduling the next
// burst once the last one has passed. f.mu must be held.
func (f *faults) inBurst(now time.Time) bool {
	for now.After(f.burstEnd) {
		gap := time.Duration(f.rng.ExpFloat64() * float64(f.burstEvery))
		f.burstStart = f.burstEnd.Add(gap)
		f.burstEnd = f.burstStart.Add(f.burstLen)
	}
	return !now.Before(f.burstStart)
}

// apply carries out the plan's first steps: a 503, or the delay. It
// reports whether the request should still be answered.
func (f *faults) apply(w http.ResponseWriter, r *http.Request, p faultPlan) bool {
	if p.unavailable {
		f.unavailable.Add(1)
		ociError(w, http.StatusServiceUnavailable, "UNAVAILABLE")
		return false
	}
	if p.delay > 0 || p.rate > 0 {
		f.slowed.Add(1)
	}
	if p.delay > 0 {
		return sleepCtx(r.Context(), p.delay) == nil
	}
	return true
}

// sleepCtx waits for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

var errCut = errors.New("regproxy-bench: upstream fault: response cut")

// cutWriter passes on the first left bytes of a body, then fails. The
// handler then aborts the connection, as an upstream that dies does.
// Embedding the interface hides the ResponseWriter's ReadFrom, so every
// byte passes through Write.
type cutWriter struct {
	http.ResponseWriter
	left int64
	cut  bool
}

// Unwrap lets http.ResponseController reach the real writer.
func (c *cutWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (c *cutWriter) Write(p []byte) (int, error) {
	if int64(len(p)) <= c.left {
		c.left -= int64(len(p))
		return c.ResponseWriter.Write(p)
	}
	n, _ := c.ResponseWriter.Write(p[:c.left])
	c.left, c.cut = 0, true
	return n, errCut
}
