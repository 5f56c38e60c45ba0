package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Targets, as the benchmark states them.
const (
	targetHitRatio   = 0.95                    // a: regproxy / baseline
	targetTTFB       = 100 * time.Millisecond  // c: median time to first byte
	targetStormTotal = 2200 * time.Millisecond // c: median total for 64 MiB; scaled with size
	targetP50        = 200 * time.Microsecond  // d
	targetP99        = 500 * time.Microsecond  // d
	targetRSS        = 64 * mib                // e
	// c: a storm of verifying clients, over the larger of one fill alone
	// and the same clients reading the cached blob.
	targetVerifyRatio = 1.10
)

// Time limits of the scenarios. Every loop is also bounded in count.
const (
	warmTimeout     = 4 * time.Minute
	coldTimeout     = 3 * time.Minute
	stormTimeout    = 3 * time.Minute
	manifestTimeout = time.Minute
	rssTimeout      = 3 * time.Minute
)

// bench holds what the scenarios share: the binaries, the upstream and
// the regproxy process under test.
type bench struct {
	cfg      config
	dir      string
	bins     binaries
	pki      *pki
	up       *upstream
	rp       *regproxy // replaced by a fresh process for the RSS scenario and the soak
	ngx      *nginx    // the nginx peer; nil when there is none
	ngxWhy   string    // why there is none
	progress io.Writer
}

// setup builds the binaries and starts the upstream and regproxy. On error
// it stops what it started.
func setup(ctx context.Context, cfg config, dir string, progress io.Writer) (*bench, error) {
	b := &bench{cfg: cfg, dir: dir, progress: progress}
	b.logf("building regproxy and the baseline server")
	var err error
	if b.bins, err = build(ctx, dir); err != nil {
		return nil, err
	}
	if b.pki, err = newPKI(dir); err != nil {
		return nil, err
	}
	if b.up, err = startUpstream(dir, b.pki); err != nil {
		return nil, err
	}
	if b.rp, err = startRegproxy(ctx, b.bins.regproxy, dir, b.up, b.pki.caFile, defaultRP); err != nil {
		b.up.close()
		return nil, err
	}
	b.logf("regproxy pid %d on %s; upstream %s at %s", b.rp.cmd.Process.Pid, b.rp.addr, b.up.host(), b.up.addr())
	if err := b.startPeer(ctx); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

// startPeer starts nginx when it is there and a scenario that uses it is
// to run. No nginx is no error: its rows say so.
func (b *bench) startPeer(ctx context.Context) error {
	if !b.runs("acd") {
		return nil
	}
	bin, why := findNginx(b.cfg.nginx)
	if bin == "" {
		b.ngxWhy = why
		b.logf("note: no nginx peer: %s", why)
		return nil
	}
	var err error
	if b.ngx, err = startNginx(ctx, bin, b.dir, b.up, b.pki); err != nil {
		return fmt.Errorf("nginx peer (%s; -nginx off runs without it): %w", bin, err)
	}
	b.logf("nginx peer (%s) pid %d on %s", b.ngx.version, b.ngx.cmd.Process.Pid, b.ngx.addr)
	return nil
}

// runs reports whether any of the scenarios named by letters is to run.
func (b *bench) runs(letters string) bool {
	return b.cfg.only == "" || strings.ContainsAny(b.cfg.only, letters)
}

// close stops regproxy, the nginx peer and the upstream.
func (b *bench) close() {
	b.stopRegproxy()
	if b.ngx != nil {
		b.ngx.stop()
	}
	b.up.close()
}

// peerRow says which nginx the nginx rows measured, or why there are none.
func (b *bench) peerRow() row {
	r := row{metric: "Peer: nginx proxy_cache with rpardini/docker-registry-proxy's caching settings (rows marked nginx)"}
	if b.ngx == nil {
		r.value = "not run: " + b.ngxWhy
	} else {
		r.value = b.ngx.version
	}
	return r
}

// stopRegproxy stops regproxy (SIGTERM, then SIGKILL) and passes on the
// warnings and errors at the end of its log.
func (b *bench) stopRegproxy() {
	b.rp.stop()
	if tail := b.rp.tail(); tail != "" {
		b.logf("regproxy pid %d logged (end of its log, less INFO):\n%s", b.rp.cmd.Process.Pid, tail)
	}
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.progress, "regproxy-bench: "+format+"\n", args...)
}

// runAll runs the scenarios in order. The RSS scenario and the soak come
// last: each restarts regproxy. On error it returns the rows measured so
// far.
func (b *bench) runAll(ctx context.Context) ([]row, error) {
	var rows []row
	if b.runs("acd") {
		rows = append(rows, b.peerRow())
	}
	for _, s := range []struct {
		name    string
		run     func(context.Context) ([]row, error)
		profile string // the profile's name; "" for e, which profiles its own fresh process
	}{
		{"a. warm hits", b.warmHits, "a-warm-hits"},
		{"b. cold pulls", b.coldPulls, "b-cold-pulls"},
		{"c. cold storm", b.coldStorm, "c-cold-storm"},
		{"d. tag manifest hits", b.manifestHits, "d-manifest-hits"},
		{"e. peak RSS", b.peakRSS, ""},
		{"f. soak", b.soakRun, ""},        // profiles its own fresh process
		{"g. Azure backend", b.azure, ""}, // runs regproxy processes of its own
	} {
		if !b.runs(s.name[:1]) {
			continue
		}
		b.logf("%s", s.name)
		start := time.Now()
		stop := func() {}
		if s.profile != "" {
			stop = b.profile(b.rp.proc, s.profile)
		}
		r, err := s.run(ctx)
		stop()
		rows = append(rows, r...)
		if err != nil {
			return rows, fmt.Errorf("%s: %w", s.name, err)
		}
		b.logf("%s: done in %.1f s", s.name, time.Since(start).Seconds())
	}
	return rows, nil
}

// blobURL is the URL of a blob on the upstream, as clients name it.
func (b *bench) blobURL(bl *blob) string { return "https://" + b.up.host() + blobPath(bl) }

// warmHits compares cache-hit throughput through regproxy's MITM path with
// the baseline server's, and with nginx's proxy_cache where there is one,
// on one stream and on cfg.streams at once.
func (b *bench) warmHits(ctx context.Context) ([]row, error) {
	ctx, cancel := context.WithTimeout(ctx, warmTimeout)
	defer cancel()
	bl, err := b.up.addBlob(b.cfg.warmSize, 0)
	if err != nil {
		return nil, err
	}
	defer b.up.removeBlob(bl)
	bp, baddr, err := startBaseline(ctx, b.bins.baseline, b.dir, b.pki, bl.path)
	if err != nil {
		return nil, err
	}
	defer bp.stop()
	defer b.profile(bp, "a-warm-hits-baseline")()
	sides := []*hitSide{
		{name: "regproxy", client: proxiedClient(b.rp.addr, b.rp.roots), cpu: b.rp.cpuTime},
		{name: "baseline", client: directClient(baddr, b.pki.pool), cpu: bp.cpuTime},
	}
	if b.ngx != nil {
		sides = append(sides, &hitSide{name: "nginx", client: b.ngx.client(b.pki), cpu: b.ngx.cpuTime})
	}
	url := b.blobURL(bl)
	for _, s := range sides {
		defer s.client.CloseIdleConnections()
		if s.name != "baseline" {
			if _, err := pull(ctx, s.client, url, bl.size, bl.digest); err != nil {
				return nil, fmt.Errorf("warming the %s cache: %w", s.name, err)
			}
		}
	}
	var rows []row
	for _, streams := range []int{1, b.cfg.streams} {
		if err := b.compareHits(ctx, sides, url, bl.size, streams); err != nil {
			return rows, err
		}
		rows = append(rows, b.hitRows(sides, bl.size, streams)...)
	}
	if n, want := bl.gets.Load(), int64(len(sides)-1); n != want {
		b.logf("warning: the warm blob was fetched upstream %d times, want %d: hits were not hits", n, want)
	}
	return append(rows, hitCPURows(sides, bl.size, b.cfg.warmRuns*(1+b.cfg.streams))...), nil
}

// hitRows reports one stream count of scenario a: regproxy against the
// baseline, then against nginx.
func (b *bench) hitRows(sides []*hitSide, size int64, streams int) []row {
	what := fmt.Sprintf("a. Warm hit, %s cached blob, %d stream(s): throughput (median of %d)",
		sizeName(size), streams, b.cfg.warmRuns)
	rp, base := median(sides[0].lastMBps()), median(sides[1].lastMBps())
	ratio := rp / base
	rows := []row{{metric: what, value: fmtMBps(rp), peer: fmtMBps(base), ratio: fmtRatio(ratio),
		target: fmt.Sprintf("≥ %.2f× baseline", targetHitRatio), met: verdict(ratio >= targetHitRatio)}}
	if len(sides) > 2 {
		ng := median(sides[2].lastMBps())
		rows = append(rows, row{metric: fmt.Sprintf("a. Warm hit, %d stream(s), against nginx proxy_cache: throughput", streams),
			value: fmtMBps(rp), peer: fmtMBps(ng) + " nginx", ratio: fmtRatio(rp / ng)})
	}
	return rows
}

// hitCPURows reports the servers' CPU time per GiB over all timed runs
// (runs pulls of size bytes each).
func hitCPURows(sides []*hitSide, size int64, runs int) []row {
	gib := float64(int64(runs)*size) / (1 << 30)
	perGiB := func(s *hitSide) float64 {
		var sum time.Duration
		for _, d := range s.cpus {
			sum += d
		}
		return sum.Seconds() / gib
	}
	rp, base := perGiB(sides[0]), perGiB(sides[1])
	rows := []row{{metric: "a. Warm hit: server CPU time per GiB served (all timed runs)",
		value: fmtSec(rp), peer: fmtSec(base), ratio: fmtRatio(rp / base)}}
	if len(sides) > 2 {
		ng := perGiB(sides[2])
		rows = append(rows, row{metric: "a. Warm hit: server CPU time per GiB served, against nginx (master and workers)",
			value: fmtSec(rp), peer: fmtSec(ng) + " nginx", ratio: fmtRatio(rp / ng)})
	}
	return rows
}

// hitSide is one server of the warm-hit comparison and what it measured.
type hitSide struct {
	name   string
	client *http.Client
	cpu    func() time.Duration // the server's CPU time so far
	mbps   []float64            // per timed round, across stream counts
	cpus   []time.Duration      // the server's CPU time in each timed round
	rounds int                  // timed rounds of the current stream count
}

// lastMBps are the rates of the current stream count's rounds.
func (s *hitSide) lastMBps() []float64 { return s.mbps[len(s.mbps)-s.rounds:] }

// compareHits times cfg.warmRuns rounds of streams concurrent pulls through
// each side, rotating which goes first, after one untimed round each that
// opens the connections.
func (b *bench) compareHits(ctx context.Context, sides []*hitSide, url string, size int64, streams int) error {
	for _, s := range sides {
		s.rounds = 0
		if _, err := round(ctx, s.client, url, size, streams); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	for i := range b.cfg.warmRuns {
		line := fmt.Sprintf("  %d stream(s), run %d:", streams, i+1)
		for j := range sides {
			s := sides[(i+j)%len(sides)]
			cpu := s.cpu()
			v, err := round(ctx, s.client, url, size, streams)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			s.mbps, s.cpus, s.rounds = append(s.mbps, v), append(s.cpus, s.cpu()-cpu), s.rounds+1
		}
		for _, s := range sides {
			line += fmt.Sprintf(" %s %.0f MB/s (its CPU %.2f s)", s.name, s.mbps[len(s.mbps)-1], s.cpus[len(s.cpus)-1].Seconds())
		}
		b.logf("%s", line)
	}
	return nil
}

// round pulls url on n streams at once and returns the aggregate MB/s.
func round(ctx context.Context, c *http.Client, url string, size int64, n int) (float64, error) {
	start := time.Now()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { _, errs[i] = pull(ctx, c, url, size, "") })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return 0, err
		}
	}
	return float64(n) * float64(size) / time.Since(start).Seconds() / 1e6, nil
}

// coldPulls times pulls of fresh blobs through regproxy, which fetches,
// spools, verifies and commits while it streams, against pulls of the same
// blobs straight from the upstream.
func (b *bench) coldPulls(ctx context.Context) ([]row, error) {
	ctx, cancel := context.WithTimeout(ctx, coldTimeout)
	defer cancel()
	proxied, direct := proxiedClient(b.rp.addr, b.rp.roots), directClient(b.up.addr(), b.pki.pool)
	defer proxied.CloseIdleConnections()
	defer direct.CloseIdleConnections()
	// Open every connection first (the ping passes through regproxy to the
	// upstream), so that the runs time the data path.
	for _, c := range []*http.Client{proxied, direct} {
		if _, err := get(ctx, c, "https://"+b.up.host()+"/v2/", nil); err != nil {
			return nil, err
		}
	}
	var rps, directs, lasts []float64
	for i := range b.cfg.coldRuns {
		cpu := b.rp.cpuTime()
		r, d, err := b.coldPull(ctx, proxied, direct)
		if err != nil {
			return nil, err
		}
		rps, directs = append(rps, r.total.Seconds()), append(directs, d.total.Seconds())
		lasts = append(lasts, r.lastByte.Seconds())
		b.logf("  run %d: regproxy %.2f s (last byte after %.3f s more; its CPU %.2f s), direct %.2f s",
			i+1, r.total.Seconds(), r.lastByte.Seconds(), (b.rp.cpuTime() - cpu).Seconds(), d.total.Seconds())
	}
	rp, dir := median(rps), median(directs)
	size := float64(b.cfg.coldSize)
	return []row{{
		metric: fmt.Sprintf("b. Cold pull, fresh %s blob: time (median of %d)", sizeName(b.cfg.coldSize), b.cfg.coldRuns),
		value:  fmtSec(rp), peer: fmtSec(dir) + " direct", ratio: fmtRatio(rp / dir),
	}, {
		metric: "b. Cold pull: throughput",
		value:  fmtMBps(size / rp / 1e6), peer: fmtMBps(size/dir/1e6) + " direct", ratio: fmtRatio(dir / rp),
	}, {
		metric: "b. Cold pull: wait for the last byte (regproxy holds it until verified and committed), median",
		value:  fmtSec(median(lasts)),
	}}, nil
}

// coldPull pulls one fresh blob directly, then through regproxy.
func (b *bench) coldPull(ctx context.Context, proxied, direct *http.Client) (rp, dir pullResult, err error) {
	bl, err := b.up.addBlob(b.cfg.coldSize, 0)
	if err != nil {
		return rp, dir, err
	}
	defer b.up.removeBlob(bl)
	if dir, err = pull(ctx, direct, b.blobURL(bl), bl.size, ""); err != nil {
		return rp, dir, err
	}
	if rp, err = pull(ctx, proxied, b.blobURL(bl), bl.size, ""); err != nil {
		return rp, dir, err
	}
	if n := bl.gets.Load(); n != 2 {
		b.logf("warning: the cold blob was fetched upstream %d times, want 2 (one direct, one by regproxy)", n)
	}
	return rp, dir, nil
}
