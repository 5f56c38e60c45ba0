package main

import (
	"context"
	"math"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The soak (scenario f): many clients, each on a connection of its own,
// mix hits, misses, joins, Range reads, tag revalidations and requests
// they hang up on, for cfg.soak, while the upstream fails at random
// (faults.go). It runs against a fresh regproxy with --manifest-ttl 1s and
// --log-level info, whose access log gives the outcomes.

// soakTTL is the soak regproxy's --manifest-ttl: short, so that tag
// requests keep revalidating.
const soakTTL = "1s"

// soakFreshRate throttles fresh blobs upstream, so that fills last long
// enough for other clients to join them.
const soakFreshRate = 8e6

// soak is the state the soak's clients share.
type soak struct {
	b        *bench
	warm     []*blob
	deadline time.Time

	mu         sync.Mutex    // guards the fields below
	inflight   map[*blob]int // fresh blobs being pulled by misses now, and by how many
	last       *blob         // the newest fresh blob
	fresh      []*blob       // every fresh blob, removed at the end
	freshBytes int64         // their total size, bounded by cfg.soakFreshBudget

	wrong atomic.Int64 // wrong bytes seen by any client
	early atomic.Int64 // bodies that ended early yet looked complete
}

// clientStats is what one soak client saw, by operation.
type clientStats [numOps]kindStats

type kindStats struct {
	ok, cancelled int
	bytes         int64
	lat           []time.Duration // of the successful and cancelled ones
	causes        map[string]int  // errors by cause
}

// runClient runs operations on c until the deadline.
func (s *soak) runClient(ctx context.Context, c *http.Client, seed uint64) *clientStats {
	rng := rand.New(rand.NewPCG(seed, 0xc11e))
	st := new(clientStats)
	for time.Now().Before(s.deadline) && ctx.Err() == nil {
		kind := pickOp(rng)
		opCtx, cancel := context.WithTimeout(ctx, opTimeout)
		start := time.Now()
		res := s.do(opCtx, c, rng, &kind)
		cancel()
		s.wrong.Add(res.wrong)
		if res.early {
			s.early.Add(1)
		}
		st[kind].add(res, time.Since(start))
	}
	return st
}

func (k *kindStats) add(res opResult, d time.Duration) {
	k.bytes += res.bytes
	switch {
	case res.cause != "":
		if k.causes == nil {
			k.causes = map[string]int{}
		}
		k.causes[res.cause]++
		return
	case res.early:
		if k.causes == nil {
			k.causes = map[string]int{}
		}
		k.causes["ended early, looked complete"]++
		return
	case res.cancelled:
		k.cancelled++
	default:
		k.ok++
	}
	k.lat = append(k.lat, d)
}

// do runs one operation of kind. A join with nothing to join, or a miss
// over the fresh-blob budget, becomes a hit; kind says what ran.
func (s *soak) do(ctx context.Context, c *http.Client, rng *rand.Rand, kind *opKind) opResult {
	switch *kind {
	case opMiss:
		if bl := s.newFresh(rng); bl != nil {
			defer s.track(bl, -1)
			return getBlob(ctx, c, s.b.blobURL(bl), bl, false, 0, 0, -1)
		}
	case opJoin:
		if bl := s.joinable(rng); bl != nil {
			return getBlob(ctx, c, s.b.blobURL(bl), bl, false, 0, 0, -1)
		}
	case opRange:
		bl := s.someBlob(rng)
		first := rng.Int64N(bl.size)
		last := min(bl.size-1, first+rng.Int64N(min(bl.size, 1<<20)))
		return getBlob(ctx, c, s.b.blobURL(bl), bl, true, first, last, -1)
	case opTag:
		return s.tagOp(ctx, c, rng)
	case opCancel:
		bl := s.someBlob(rng)
		return getBlob(ctx, c, s.b.blobURL(bl), bl, false, 0, 0, 1+rng.Int64N(bl.size-1))
	}
	*kind = opHit
	bl := s.warm[rng.IntN(len(s.warm))]
	return getBlob(ctx, c, s.b.blobURL(bl), bl, false, 0, 0, -1)
}

// tagOp GETs the tag (half the time), HEADs it, or GETs the manifest by
// digest.
func (s *soak) tagOp(ctx context.Context, c *http.Client, rng *rand.Rand) opResult {
	up := s.b.up
	base := "https://" + up.host() + "/v2/" + manifestRepo + "/manifests/"
	switch n := rng.IntN(4); {
	case n < 2:
		return getManifest(ctx, c, base+manifestTag, http.MethodGet, up.manifest, up.mdigest)
	case n == 2:
		return getManifest(ctx, c, base+manifestTag, http.MethodHead, up.manifest, up.mdigest)
	default:
		return getManifest(ctx, c, base+up.mdigest, http.MethodGet, up.manifest, up.mdigest)
	}
}

// newFresh makes a blob regproxy has never seen (32 KiB to 1 MiB) and
// marks it in flight, or returns nil once the budget is spent.
func (s *soak) newFresh(rng *rand.Rand) *blob {
	size := 32<<10 + rng.Int64N(mib-32<<10)
	s.mu.Lock()
	if s.freshBytes+size > s.b.cfg.soakFreshBudget {
		s.mu.Unlock()
		return nil
	}
	s.freshBytes += size
	s.mu.Unlock()
	bl, err := s.b.up.addBlob(size, soakFreshRate)
	if err != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fresh = append(s.fresh, bl)
	s.last = bl
	s.inflight[bl]++
	return bl
}

// track counts pullers of a fresh blob in or out.
func (s *soak) track(bl *blob, d int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight[bl] += d; s.inflight[bl] <= 0 {
		delete(s.inflight, bl)
	}
}

// joinable picks a fresh blob a miss is pulling now, else the newest one
// (then likely a hit), else nil.
func (s *soak) joinable(rng *rand.Rand) *blob {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.inflight) > 0 {
		i := rng.IntN(len(s.inflight))
		for bl := range s.inflight {
			if i == 0 {
				return bl
			}
			i--
		}
	}
	return s.last
}

// someBlob is a warm blob, or one time in three a fresh one being pulled.
func (s *soak) someBlob(rng *rand.Rand) *blob {
	if rng.IntN(3) == 0 {
		if bl := s.joinable(rng); bl != nil {
			return bl
		}
	}
	return s.warm[rng.IntN(len(s.warm))]
}

// warmSizes spreads n blob sizes evenly on a log scale from 256 KiB to
// most.
func warmSizes(n int, most int64) []int64 {
	least := float64(256 << 10)
	sizes := make([]int64, n)
	for i := range sizes {
		f := float64(i) / float64(max(1, n-1))
		sizes[i] = int64(least * math.Pow(float64(most)/least, f))
	}
	return sizes
}

// sample is one reading of regproxy's process.
type sample struct {
	at  time.Duration // since the clients started
	st  procStatus
	fds int
}

// sampleEvery reads regproxy's status every interval until stop closes.
func sampleEvery(p *proc, start time.Time, interval time.Duration, stop <-chan struct{}) []sample {
	var out []sample
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if st, err := p.status(); err == nil {
			out = append(out, sample{at: time.Since(start), st: st, fds: p.fds()})
		}
		select {
		case <-stop:
			return out
		case <-t.C:
		}
	}
}
