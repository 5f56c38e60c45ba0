package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// stormResult is what a storm of clients pulling one blob saw.
type stormResult struct {
	fetches int64           // GETs of the blob that reached the upstream meanwhile
	conn    []time.Duration // per client, from the common start to its connection
	ttfb    []time.Duration // per client, from the common start
	total   []time.Duration
}

// storm starts clients at once, each with a client of its own from
// newClient and so on a connection of its own (as many nodes would), all
// pulling bl. Every client hashes its body as it reads it and checks it
// against the digest, as containerd, skopeo and crane do.
func (b *bench) storm(ctx context.Context, newClient func() *http.Client, bl *blob, clients int) (stormResult, error) {
	before := bl.gets.Load()
	start := make(chan struct{})
	results := make([]pullResult, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		c := newClient()
		wg.Go(func() {
			defer c.CloseIdleConnections()
			<-start
			results[i], errs[i] = pull(ctx, c, b.blobURL(bl), bl.size, bl.digest)
		})
	}
	close(start)
	wg.Wait()
	res := stormResult{fetches: bl.gets.Load() - before}
	for i, r := range results {
		if errs[i] != nil {
			return res, fmt.Errorf("client %d: %w", i, errs[i])
		}
		res.conn = append(res.conn, r.conn)
		res.ttfb, res.total = append(res.ttfb, r.ttfb), append(res.total, r.total)
	}
	return res, nil
}

// viaProxy returns new clients of rp, one connection each.
func viaProxy(rp *regproxy) func() *http.Client {
	return func() *http.Client { return proxiedClient(rp.addr, rp.roots) }
}

// coldStorm is scenario c: a fresh blob, a throttled upstream, many clients
// at once. One upstream fetch must serve them all, and they should get
// their first bytes at once and finish about when the upstream does. The
// peer is the same storm on the baseline server, warm and unthrottled:
// what the clients' TLS alone costs on this machine. Then, with every
// client verifying its body: how the storm compares with its two bounds,
// one fill alone and the same clients reading the blob once cached; and
// nginx's proxy_cache in the same storm, on a fresh blob of its own.
func (b *bench) coldStorm(ctx context.Context) ([]row, error) {
	ctx, cancel := context.WithTimeout(ctx, stormTimeout)
	defer cancel()
	size, rate, n := b.cfg.stormSize, b.cfg.stormRate, b.cfg.stormClients
	alone, err := b.fillAlone(ctx, size, rate)
	if err != nil {
		return nil, err
	}
	bl, err := b.up.addBlob(size, rate)
	if err != nil {
		return nil, err
	}
	defer b.up.removeBlob(bl)
	cpu := b.rp.cpuTime()
	res, err := b.storm(ctx, viaProxy(b.rp), bl, n)
	if err != nil {
		return nil, err
	}
	b.logf("  regproxy CPU during the storm: %.2f s", (b.rp.cpuTime() - cpu).Seconds())
	warm, err := b.storm(ctx, viaProxy(b.rp), bl, n)
	if err != nil {
		return nil, fmt.Errorf("warm read: %w", err)
	}
	peer, err := b.baselineStorm(ctx, bl, n)
	if err != nil {
		return nil, err
	}
	rows := stormRows(res, peer, size, rate, n)
	rows = append(rows, verifyRows(res, warm, alone, n)...)
	ngx, err := b.nginxStorm(ctx, size, rate, n)
	if err != nil {
		return rows, err
	}
	return append(rows, nginxStormRows(res, ngx)...), nil
}

// fillAlone is one verifying client pulling a fresh blob of size at rate
// through regproxy: the time of one upstream fill, with no storm.
func (b *bench) fillAlone(ctx context.Context, size, rate int64) (time.Duration, error) {
	bl, err := b.up.addBlob(size, rate)
	if err != nil {
		return 0, err
	}
	defer b.up.removeBlob(bl)
	c := proxiedClient(b.rp.addr, b.rp.roots)
	defer c.CloseIdleConnections()
	r, err := pull(ctx, c, b.blobURL(bl), bl.size, bl.digest)
	if err != nil {
		return 0, fmt.Errorf("one fill alone: %w", err)
	}
	return r.total, nil
}

// verifyRows reports the verifying storm against its bounds: the storm's
// median total can be no shorter than one fill, nor than the same clients
// reading the blob from regproxy's cache.
func verifyRows(storm, warm stormResult, alone time.Duration, n int) []row {
	med, warmMed := percentile(storm.total, 50), percentile(warm.total, 50)
	bound := max(alone, warmMed)
	ratio := med.Seconds() / bound.Seconds()
	return []row{
		{metric: "c. Verifying storm (every client checks sha256 as it reads): one upstream fill alone, 1 client, same blob size and rate: total",
			value: fmtSec(alone.Seconds())},
		{metric: fmt.Sprintf("c. Verifying storm: the same %d clients reading the blob from regproxy's cache (warm): total per client, median", n),
			value: fmtSec(warmMed.Seconds())},
		{metric: "c. Verifying storm: storm median total / the larger of those two",
			value: fmtSec(med.Seconds()), peer: fmtSec(bound.Seconds()), ratio: fmtRatio(ratio),
			target: fmt.Sprintf("≤ %.2f×", targetVerifyRatio), met: verdict(ratio <= targetVerifyRatio)},
		{metric: "c. Verifying storm: upstream blob fetches by the warm read", value: fmt.Sprint(warm.fetches),
			target: "= 0", met: verdict(warm.fetches == 0)},
	}
}

// baselineStorm runs the storm's clients against the baseline server
// serving bl's file.
func (b *bench) baselineStorm(ctx context.Context, bl *blob, n int) (stormResult, error) {
	bp, addr, err := startBaseline(ctx, b.bins.baseline, b.dir, b.pki, bl.path)
	if err != nil {
		return stormResult{}, err
	}
	defer bp.stop()
	return b.storm(ctx, func() *http.Client { return directClient(addr, b.pki.pool) }, bl, n)
}

// stormRows reports scenario c.
func stormRows(res, peer stormResult, size, rate int64, n int) []row {
	ideal := time.Duration(float64(size) / float64(rate) * float64(time.Second))
	// The stated target is for 64 MiB; a smaller blob (quick mode) gets a
	// proportionally smaller one.
	target := time.Duration(float64(targetStormTotal) * float64(size) / float64(64*mib))
	ttfb50, total50 := percentile(res.ttfb, 50), percentile(res.total, 50)
	pttfb50, ptotal50 := percentile(peer.ttfb, 50), percentile(peer.total, 50)
	what := fmt.Sprintf("c. Cold storm, %d clients, fresh %s blob, upstream at %.0f MB/s", n, sizeName(size), float64(rate)/1e6)
	const plain = " plain server"
	return []row{
		{metric: what + ": upstream blob fetches", value: fmt.Sprint(res.fetches),
			target: "= 1", met: verdict(res.fetches == 1)},
		{metric: "c. Cold storm: time to first byte, median", value: fmtMs(ttfb50), peer: fmtMs(pttfb50) + plain,
			target: "≤ " + fmtMs(targetTTFB), met: verdict(ttfb50 <= targetTTFB)},
		{metric: "c. Cold storm: time to first byte, max", value: fmtMs(percentile(res.ttfb, 100)),
			peer: fmtMs(percentile(peer.ttfb, 100)) + plain},
		{metric: "c. Cold storm: of which connection set-up (CONNECT and TLS), median",
			value: fmtMs(percentile(res.conn, 50)), peer: fmtMs(percentile(peer.conn, 50)) + plain},
		{metric: fmt.Sprintf("c. Cold storm: total time per client, median (upstream alone: %s)", fmtSec(ideal.Seconds())),
			value: fmtSec(total50.Seconds()), peer: fmtSec(ptotal50.Seconds()) + plain,
			ratio:  fmtRatio(total50.Seconds() / ptotal50.Seconds()),
			target: "≤ " + fmtSec(target.Seconds()), met: verdict(total50 <= target)},
		{metric: "c. Cold storm: total time per client, max", value: fmtSec(percentile(res.total, 100).Seconds()),
			peer: fmtSec(percentile(peer.total, 100).Seconds()) + plain},
	}
}

// manifestHits is scenario d: sequential GETs of a cached tag on one
// keep-alive connection through regproxy. The peers run the same loop
// against the baseline server serving the manifest from a file (a plain
// Go TLS server in another process, the floor of this machine) and
// against nginx's proxy_cache, where there is one. The sides take turns,
// manifestRound GETs at a time, so that a machine shared with other work
// slows them alike.
func (b *bench) manifestHits(ctx context.Context) ([]row, error) {
	ctx, cancel := context.WithTimeout(ctx, manifestTimeout)
	defer cancel()
	url := "https://" + b.up.host() + tagPath()
	file := filepath.Join(b.dir, "manifest.json")
	if err := os.WriteFile(file, b.up.manifest, 0o644); err != nil {
		return nil, err
	}
	bp, addr, err := startBaseline(ctx, b.bins.baseline, b.dir, b.pki, file)
	if err != nil {
		return nil, err
	}
	defer bp.stop()
	loops := []*getLoop{newGetLoop("regproxy", proxiedClient(b.rp.addr, b.rp.roots), b.rp.proc),
		newGetLoop("baseline", directClient(addr, b.pki.pool), bp)}
	if b.ngx != nil {
		loops = append(loops, newGetLoop("nginx", b.ngx.client(b.pki), b.ngx))
	}
	for _, l := range loops {
		defer l.client.CloseIdleConnections()
		if _, err := get(ctx, l.client, url, acceptHeader()); err != nil { // the warming GET
			return nil, fmt.Errorf("%s: %w", l.name, err)
		}
	}
	before := b.up.manifestReqs.Load()
	if err := b.takeTurns(ctx, loops, url); err != nil {
		return nil, err
	}
	upstreamReqs := b.up.manifestReqs.Load() - before
	rows := manifestRows(loops[0], loops[1], upstreamReqs)
	if len(loops) > 2 {
		rows = append(rows, nginxManifestRows(loops[0], loops[2])...)
	}
	return rows, nil
}

// manifestRound is how many GETs a side of scenario d makes in its turn.
const manifestRound = 100

// getLoop is one side of scenario d: a client held to one connection,
// the latencies of its GETs, and what its server spent on them.
type getLoop struct {
	name     string
	client   *http.Client
	dials    *atomic.Int64
	lat      []time.Duration
	server   serverProc
	cpu      time.Duration // the server's CPU time in its turns
	switches int64         // the server's context switches in its turns
}

// serverProc is what scenario d reads of a server's processes.
type serverProc interface {
	cpuTime() time.Duration
	switches() int64
}

func newGetLoop(name string, c *http.Client, server serverProc) *getLoop {
	c, dials := singleConnClient(c)
	return &getLoop{name: name, client: c, dials: dials, server: server}
}

// perGet is the server's CPU time and context switches per GET: the sides
// take turns, so what each server spent in its turns went to its own GETs.
func (l *getLoop) perGet() string {
	n := float64(len(l.lat))
	return fmt.Sprintf("%.0f µs, %.1f switches", float64(l.cpu.Microseconds())/n, float64(l.switches)/n)
}

// takeTurns runs cfg.manifestGets GETs of url on every loop, the loops
// taking turns, stopping early at a third of manifestTimeout.
func (b *bench) takeTurns(ctx context.Context, loops []*getLoop, url string) error {
	header := acceptHeader()
	runtime.GC() // start from a clean heap in the bench process
	deadline := time.Now().Add(manifestTimeout / 3)
	for done := 0; done < b.cfg.manifestGets; done += manifestRound {
		if time.Now().After(deadline) {
			b.logf("warning: stopped after %d GETs per side at the time limit", done)
			break
		}
		for _, l := range loops {
			cpu, switches := l.server.cpuTime(), l.server.switches()
			for range min(manifestRound, b.cfg.manifestGets-done) {
				d, err := get(ctx, l.client, url, header)
				if err != nil {
					return fmt.Errorf("%s: %w", l.name, err)
				}
				l.lat = append(l.lat, d)
			}
			l.cpu += l.server.cpuTime() - cpu
			l.switches += l.server.switches() - switches
		}
	}
	return nil
}

// manifestRows reports scenario d against the baseline server.
func manifestRows(rp, base *getLoop, upstreamReqs int64) []row {
	p50, p99 := percentile(rp.lat, 50), percentile(rp.lat, 99)
	d50, d99 := percentile(base.lat, 50), percentile(base.lat, 99)
	const plain = " plain server"
	dials := rp.dials.Load()
	return []row{
		{metric: fmt.Sprintf("d. Tag manifest hit, %d sequential GETs on one keep-alive connection, in turns of %d with the peers: p50",
			len(rp.lat), manifestRound),
			value: fmtMs(p50), peer: fmtMs(d50) + plain, ratio: fmtRatio(float64(p50) / float64(d50)),
			target: "≤ " + fmtMs(targetP50), met: verdict(p50 <= targetP50)},
		{metric: "d. Tag manifest hit: p99", value: fmtMs(p99), peer: fmtMs(d99) + plain,
			ratio:  fmtRatio(float64(p99) / float64(d99)),
			target: "≤ " + fmtMs(targetP99), met: verdict(p99 <= targetP99)},
		{metric: "d. Tag manifest hit: server CPU time and context switches per GET (in its turns)",
			value: rp.perGet(), peer: base.perGet() + plain},
		{metric: "d. Tag manifest hit: upstream manifest requests during the GETs (every side)", value: fmt.Sprint(upstreamReqs),
			target: "= 0", met: verdict(upstreamReqs == 0)},
		{metric: "d. Tag manifest hit: client connections to regproxy", value: fmt.Sprint(dials),
			target: "= 1", met: verdict(dials == 1)},
	}
}

// acceptHeader is what a containerd-style client sends for a manifest.
func acceptHeader() http.Header {
	return http.Header{"Accept": {manifestType + ", application/vnd.oci.image.index.v1+json"}}
}

// singleConnClient limits c to one connection per host and counts its dials.
func singleConnClient(c *http.Client) (*http.Client, *atomic.Int64) {
	t := c.Transport.(*http.Transport)
	t.MaxConnsPerHost = 1
	var dials atomic.Int64
	dial := t.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return dial(ctx, network, addr)
	}
	return c, &dials
}

// peakRSS is scenario e. It reports the peak RSS regproxy reached in
// scenarios a–d, then restarts it fresh, runs a storm of clients on one
// large cold blob, and reports the new process's peak.
func (b *bench) peakRSS(ctx context.Context) ([]row, error) {
	ctx, cancel := context.WithTimeout(ctx, rssTimeout)
	defer cancel()
	before, err := b.rp.peakRSS()
	if err != nil {
		return nil, err
	}
	rows := []row{{metric: "e. Peak RSS (VmHWM) of regproxy after scenarios a–d", value: fmtMiB(before),
		target: "≤ " + fmtMiB(targetRSS), met: verdict(before <= targetRSS)}}
	b.stopRegproxy()
	fresh, err := startRegproxy(ctx, b.bins.regproxy, b.dir, b.up, b.pki.caFile, defaultRP)
	if err != nil {
		return rows, err
	}
	b.rp = fresh // for close to stop
	idle, err := b.rp.peakRSS()
	if err != nil {
		return rows, err
	}
	bl, err := b.up.addBlob(b.cfg.rssSize, 0)
	if err != nil {
		return rows, err
	}
	defer b.up.removeBlob(bl)
	stop := b.profile(b.rp.proc, "e-rss-storm")
	res, err := b.storm(ctx, viaProxy(b.rp), bl, b.cfg.rssClients)
	stop()
	if err != nil {
		return rows, err
	}
	peak, err := b.rp.peakRSS()
	if err != nil {
		return rows, err
	}
	what := fmt.Sprintf("e. Peak RSS (VmHWM) of a fresh regproxy after %d clients pull one cold %s blob",
		b.cfg.rssClients, sizeName(b.cfg.rssSize))
	return append(rows,
		row{metric: what, value: fmtMiB(peak), peer: fmtMiB(idle) + " at start",
			target: "≤ " + fmtMiB(targetRSS), met: verdict(peak <= targetRSS)},
		row{metric: "e. That storm: upstream blob fetches", value: fmt.Sprint(res.fetches),
			target: "= 1", met: verdict(res.fetches == 1)},
		row{metric: "e. That storm: total time per client, median / max",
			value: fmtSec(percentile(res.total, 50).Seconds()) + " / " + fmtSec(percentile(res.total, 100).Seconds())},
	), nil
}
