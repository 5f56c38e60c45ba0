package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Soak targets: regproxy's memory, threads and open files must not grow
// while the load stays the same, and no byte may be wrong.
const (
	soakRSSGrowth     = 1.25    // second-half peak ≤ this × first-half peak …
	soakRSSSlack      = 8 * mib // … + this
	soakThreadsSlack  = 4       // second-half peak ≤ first-half peak + this
	soakFdsSlack      = 8       // idle end ≤ idle start + this
	soakMaxFailed     = 0.05    // failed / (requests not cancelled on purpose)
	soakSettle        = 2 * time.Second
	soakSampleEvery   = 500 * time.Millisecond
	soakSetupTimeout  = 2 * time.Minute
	soakFinishTimeout = opTimeout + 30*time.Second
)

// errWrongBytes makes the run fail: correctness is not a performance
// target.
var errWrongBytes = errors.New("soak: clients received wrong bytes, or bodies that ended early yet looked complete")

// soakRun is scenario f.
func (b *bench) soakRun(ctx context.Context) ([]row, error) {
	ctx, cancel := context.WithTimeout(ctx, soakSetupTimeout+b.cfg.soak+soakFinishTimeout)
	defer cancel()
	b.stopRegproxy()
	fresh, err := startRegproxy(ctx, b.bins.regproxy, b.dir, b.up, b.pki.caFile, rpOptions{logLevel: "info", manifestTTL: soakTTL})
	if err != nil {
		return nil, err
	}
	b.rp = fresh
	s := &soak{b: b, inflight: map[*blob]int{}}
	defer s.removeBlobs()
	if err := s.warmUp(ctx); err != nil {
		return nil, err
	}
	time.Sleep(soakSettle)
	idleStart, err := b.rp.status()
	if err != nil {
		return nil, err
	}
	fdsStart := b.rp.fds()
	f := soakFaults()
	b.up.faults.Store(f)
	stop := b.profile(b.rp.proc, "f-soak")
	stats, samples, elapsed := s.load(ctx)
	stop()
	b.up.faults.Store(nil)
	idleEnd, fdsEnd := b.settle(fdsStart)
	outcomes, err := accessOutcomes(b.rp.logPath)
	if err != nil {
		b.logf("warning: reading regproxy's access log: %v", err)
	}
	rows := s.rows(stats, elapsed, f, outcomes)
	rows = append(rows, resourceRows(idleStart, idleEnd, fdsStart, fdsEnd, samples)...)
	if s.wrong.Load() > 0 || s.early.Load() > 0 {
		return rows, errWrongBytes
	}
	return rows, nil
}

// warmUp makes the warm set, pulls each blob once through regproxy, and
// fetches the tag and the manifest by digest.
func (s *soak) warmUp(ctx context.Context) error {
	c := proxiedClient(s.b.rp.addr, s.b.rp.roots)
	defer c.CloseIdleConnections()
	for _, size := range warmSizes(s.b.cfg.soakWarmBlobs, s.b.cfg.soakWarmMax) {
		bl, err := s.b.up.addBlob(size, 0)
		if err != nil {
			return err
		}
		s.warm = append(s.warm, bl)
		if _, err := pull(ctx, c, s.b.blobURL(bl), bl.size, bl.digest); err != nil {
			return fmt.Errorf("warming the soak's blobs: %w", err)
		}
	}
	for _, ref := range []string{manifestTag, s.b.up.mdigest} {
		url := "https://" + s.b.up.host() + "/v2/" + manifestRepo + "/manifests/" + ref
		if _, err := get(ctx, c, url, acceptHeader()); err != nil {
			return fmt.Errorf("warming the soak's manifest: %w", err)
		}
	}
	return nil
}

// load runs the clients until the deadline and samples regproxy meanwhile.
func (s *soak) load(ctx context.Context) ([]*clientStats, []sample, time.Duration) {
	n := s.b.cfg.soakClients
	s.b.logf("  %d clients for %v; upstream faults on", n, s.b.cfg.soak)
	start := time.Now()
	s.deadline = start.Add(s.b.cfg.soak)
	stop := make(chan struct{})
	samplesc := make(chan []sample, 1)
	go func() { samplesc <- sampleEvery(s.b.rp.proc, start, soakSampleEvery, stop) }()
	stats := make([]*clientStats, n)
	var wg sync.WaitGroup
	for i := range n {
		c := proxiedClient(s.b.rp.addr, s.b.rp.roots)
		wg.Go(func() {
			defer c.CloseIdleConnections()
			stats[i] = s.runClient(ctx, c, uint64(start.UnixNano())+uint64(i))
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	return stats, <-samplesc, elapsed
}

// settle closes the upstream's idle connections and waits until
// regproxy's open files stop falling (at most a few seconds), then reads
// its status.
func (b *bench) settle(fdsStart int) (procStatus, int) {
	b.up.closeIdle()
	fds := b.rp.fds()
	for deadline := time.Now().Add(3 * soakSettle); time.Now().Before(deadline) && fds > fdsStart; {
		time.Sleep(soakSampleEvery)
		fds = b.rp.fds()
	}
	st, _ := b.rp.status()
	return st, fds
}

// removeBlobs deletes the soak's blob files.
func (s *soak) removeBlobs() {
	for _, bl := range append(s.warm, s.fresh...) {
		s.b.up.removeBlob(bl)
	}
}

// accessOutcomes counts regproxy's access-log outcomes ("HIT",
// "MISS-JOINED-ABORTED", …) and its resumed fills (key "resumed").
func accessOutcomes(path string) (map[string]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	counts := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, `msg="resuming cut blob fill"`) {
			counts["resumed"]++
			continue
		}
		if !strings.Contains(line, "msg=request ") {
			continue
		}
		if _, v, ok := strings.Cut(line, " outcome="); ok {
			v, _, _ = strings.Cut(v, " ")
			counts[v]++
		}
	}
	return counts, sc.Err()
}

// fmtCounts prints counts as "k n, k n", largest first, or "none".
func fmtCounts(m map[string]int) string {
	keys := slices.SortedFunc(maps.Keys(m), func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
