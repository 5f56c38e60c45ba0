package main

import (
	"context"
	"fmt"
	"net/http"
)

// The nginx peer's part of scenarios c and d. Its rows put regproxy's
// figure in the value column and nginx's in the peer column.

// nginxStorm runs the storm's clients against nginx on a fresh blob of its
// own, at the same rate, so that nginx's cache is cold too. It returns nil
// when there is no nginx.
func (b *bench) nginxStorm(ctx context.Context, size, rate int64, n int) (*stormResult, error) {
	if b.ngx == nil {
		return nil, nil
	}
	bl, err := b.up.addBlob(size, rate)
	if err != nil {
		return nil, err
	}
	defer b.up.removeBlob(bl)
	cpu := b.ngx.cpuTime()
	res, err := b.storm(ctx, func() *http.Client { return b.ngx.client(b.pki) }, bl, n)
	if err != nil {
		return nil, fmt.Errorf("nginx storm: %w", err)
	}
	b.logf("  nginx CPU during its storm: %.2f s", (b.ngx.cpuTime() - cpu).Seconds())
	return &res, nil
}

// nginxStormRows compares regproxy's storm with nginx's.
func nginxStormRows(rp stormResult, ngx *stormResult) []row {
	if ngx == nil {
		return nil
	}
	const tag = " nginx"
	total, ntotal := percentile(rp.total, 50), percentile(ngx.total, 50)
	return []row{
		{metric: "c. Storm against nginx proxy_cache (proxy_cache_lock on; fresh blob, same size and rate): upstream blob fetches",
			value: fmt.Sprint(rp.fetches), peer: fmt.Sprint(ngx.fetches) + tag},
		{metric: "c. Storm against nginx: time to first byte, median / max",
			value: fmtMs(percentile(rp.ttfb, 50)) + " / " + fmtMs(percentile(rp.ttfb, 100)),
			peer:  fmtMs(percentile(ngx.ttfb, 50)) + " / " + fmtMs(percentile(ngx.ttfb, 100)) + tag},
		{metric: "c. Storm against nginx: total time per client, median", value: fmtSec(total.Seconds()),
			peer: fmtSec(ntotal.Seconds()) + tag, ratio: fmtRatio(total.Seconds() / ntotal.Seconds())},
		{metric: "c. Storm against nginx: total time per client, max", value: fmtSec(percentile(rp.total, 100).Seconds()),
			peer: fmtSec(percentile(ngx.total, 100).Seconds()) + tag},
	}
}

// nginxManifestRows compares regproxy's tag hits with nginx's, measured
// in turns: the target is both percentiles at or below nginx's.
func nginxManifestRows(rp, ngx *getLoop) []row {
	const tag = " nginx"
	p50, p99 := percentile(rp.lat, 50), percentile(rp.lat, 99)
	n50, n99 := percentile(ngx.lat, 50), percentile(ngx.lat, 99)
	return []row{
		{metric: "d. Tag manifest hit against nginx proxy_cache (same loop, in turns): p50", value: fmtMs(p50),
			peer: fmtMs(n50) + tag, ratio: fmtRatio(float64(p50) / float64(n50)),
			target: "≤ nginx", met: verdict(p50 <= n50)},
		{metric: "d. Tag manifest hit against nginx: p99", value: fmtMs(p99),
			peer: fmtMs(n99) + tag, ratio: fmtRatio(float64(p99) / float64(n99)),
			target: "≤ nginx", met: verdict(p99 <= n99)},
		{metric: "d. Tag manifest hit against nginx: server CPU time and context switches per GET", value: rp.perGet(),
			peer: ngx.perGet() + tag},
		{metric: "d. Tag manifest hit against nginx: client connections",
			value: fmt.Sprint(rp.dials.Load()), peer: fmt.Sprint(ngx.dials.Load()) + tag},
	}
}
