package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regproxy/regproxy/cachestore/evict"
	"github.com/regproxy/regproxy/internal/testupstream"
	"github.com/regproxy/regproxy/metrics"
	"github.com/regproxy/regproxy/proxy"
)

// figure is one figure of the rendered page: its exact value (data-v)
// and the text a person reads.
type figure struct {
	value float64
	text  string
}

// figures reads every figure the page shows now, by its data-k.
func (b *browser) figures() map[string]figure {
	b.t.Helper()
	rows := eval[[][]string](b, "read the figures",
		`Array.from(document.querySelectorAll("[data-k]"), e => [e.dataset.k, e.dataset.v, e.textContent.trim()])`)
	out := map[string]figure{}
	for _, r := range rows {
		v, err := strconv.ParseFloat(r[1], 64)
		if err != nil {
			b.t.Fatalf("figure %s: data-v %q: %v", r[0], r[1], err)
		}
		out[r[0]] = figure{v, r[2]}
	}
	return out
}

// wantFigures is what the page must show for a scrape of /metrics.
func wantFigures(s scrape) map[string]float64 {
	var requests, hits float64
	for _, o := range metrics.CacheOutcomes {
		v := s.get("regproxy_requests_total", "outcome", o)
		requests += v
		if o != "miss" {
			hits += v
		}
	}
	served, fetched := s.get("regproxy_served_bytes_total"), s.get("regproxy_upstream_bytes_total")
	w := map[string]float64{
		"hit_ratio": hits / requests, "cache_hits": hits, "cache_requests": requests,
		"served_bytes": served, "upstream_bytes": fetched, "saved_bytes": served - fetched,
		"fills_in_flight": s.get("regproxy_fills_in_flight"),
		"upstream_errors": s.get("regproxy_upstream_errors_total"),
		"rate_limited":    s.get("regproxy_upstream_rate_limited_total"),
		"cache_bytes":     s.get("regproxy_cache_bytes"), "cache_entries": s.get("regproxy_cache_entries"),
		"cache_max_bytes": s.get("regproxy_cache_max_bytes"), "cache_free_bytes": s.get("regproxy_cache_free_bytes"),
		"evicted_entries": s.get("regproxy_cache_evictions_total"),
	}
	w["cache_use"] = w["cache_bytes"] / w["cache_max_bytes"]
	for _, k := range metrics.Kinds {
		w["cache_bytes/"+k] = s.get("regproxy_cache_bytes", "kind", k)
		w["cache_entries/"+k] = s.get("regproxy_cache_entries", "kind", k)
	}
	reg, r := "registry/registry.test/", []string{"registry", "registry.test"}
	var regRequests, regHits float64
	for _, o := range metrics.CacheOutcomes {
		v := s.get("regproxy_requests_total", append(r, "outcome", o)...)
		regRequests += v
		if o != "miss" {
			regHits += v
		}
	}
	regServed, regFetched := s.get("regproxy_served_bytes_total", r...), s.get("regproxy_upstream_bytes_total", r...)
	w[reg+"cache_requests"], w[reg+"hit_ratio"] = regRequests, regHits/regRequests
	w[reg+"served_bytes"], w[reg+"upstream_bytes"], w[reg+"saved_bytes"] = regServed, regFetched, regServed-regFetched
	w[reg+"upstream_errors"] = s.get("regproxy_upstream_errors_total", r...)
	w[reg+"rate_limited"] = s.get("regproxy_upstream_rate_limited_total", r...)
	return w
}

// wantText is how the page writes a figure of key.
func wantText(key string, v float64) string {
	switch {
	case strings.HasSuffix(key, "hit_ratio"), key == "cache_use":
		return proxy.Percent(v)
	case strings.HasPrefix(key, "fill/") && v < 0:
		return "unknown"
	case strings.Contains(key, "bytes"), strings.HasPrefix(key, "fill/"):
		return proxy.HumanBytes(int64(v))
	}
	return strconv.FormatInt(int64(v), 10)
}

// checkFigures compares the page with a scrape of /metrics: every figure
// /metrics has must be on the page with its value, and every figure on
// the page must read as its value.
func checkFigures(t *testing.T, got map[string]figure, s scrape) {
	t.Helper()
	for k, v := range wantFigures(s) {
		if f, ok := got[k]; !ok {
			t.Errorf("the page has no figure %s; /metrics says %v", k, v)
		} else if f.value != v {
			t.Errorf("page %s = %v; /metrics says %v", k, f.value, v)
		}
	}
	for k, f := range got {
		if want := wantText(k, f.value); f.text != want {
			t.Errorf("page %s reads %q; want %q for %v", k, f.text, want, f.value)
		}
	}
}

// holdBlob sends the first half of blob d, then waits for release before
// the rest: a fill that stays in flight, halfway, as long as a test needs.
func holdBlob(d v1.Hash, blob []byte, release <-chan struct{}) testupstream.Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET blob" || !strings.HasSuffix(r.URL.Path, "/"+d.String()) {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.Write(blob[:len(blob)/2])
		w.(http.Flusher).Flush()
		select {
		case <-release:
			w.Write(blob[len(blob)/2:])
		case <-r.Context().Done():
		}
		return true
	}
}

// cacheStatsOf is the metrics' view of the eviction index, as serve wires it.
func cacheStatsOf(s evict.Stats) metrics.CacheStats {
	kind := func(k evict.KindStats) metrics.KindStats {
		return metrics.KindStats{Entries: int64(k.Entries), Bytes: k.Bytes}
	}
	return metrics.CacheStats{Blobs: kind(s.Blobs), Manifests: kind(s.Manifests), Tags: kind(s.Tags),
		Other: kind(s.Other), MaxBytes: s.MaxSize, FreeBytes: s.Free, FilesystemBytes: s.FilesystemSize,
		MinFreeBytes: s.FreeFloor, Evicted: kind(s.Evicted), Loaded: s.Loaded}
}

// statusEnv is a proxy with a disk cache under a cap, free space known,
// and the repository tally on: every part of the page has figures.
func statusEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	ev := withEviction(t, e, evict.Config{MaxSize: 64 << 20, MinFree: 1 << 30,
		FreeSpace: func() (int64, int64, error) { return 40 << 30, 100 << 30, nil }})
	m := metrics.New()
	m.TrackRepositories(metrics.DefaultTrackedRepos)
	m.SetCacheStats(func() metrics.CacheStats { return cacheStatsOf(ev.index().Stats()) })
	withIndex := e.configure
	e.configure = func(c *proxy.Config) { withIndex(c); c.Metrics = m }
	e.restart()
	return e
}

// TestStatusPageInBrowser scripts misses, hits, a 429, a stale tag after a
// 5xx and a fill held halfway, then renders the status page in headless
// Chromium: its figures are /metrics', it loads nothing but the proxy
// port, it keeps a screenshot, and it refreshes itself to the figures of
// more traffic.
func TestStatusPageInBrowser(t *testing.T) {
	t.Parallel()
	e := statusEnv(t)
	c := e.client()
	libDigest, libLayer := imageBlob(t, e, "team/lib", "v1", 64<<10)
	imageBlob(t, e, "team/app", "v1", 200<<10)
	held, heldBytes := imageBlob(t, e, "team/app", "v2", 512<<10)

	e.pull("team/app", "v1") // misses
	waitFillsIdle(t, e)
	e.pull("team/app", "v1") // hits
	e.pull("team/lib", "v1") // misses
	// The tag as the stale request below asks for it (no Accept).
	e.get(c, "GET", "/v2/team/app/manifests/v1")
	waitFillsIdle(t, e)
	e.up.SetFault(testupstream.FailWith(http.StatusTooManyRequests, "GET manifest"))
	if resp, _ := e.get(c, "GET", "/v2/team/lib/manifests/limited"); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("rate-limited tag: %d; want 429", resp.StatusCode)
	}
	e.clock.Advance(e.ttl + time.Second)
	e.up.SetFault(testupstream.FailWith(http.StatusServiceUnavailable, "HEAD manifest", "GET manifest"))
	if resp, _ := e.get(c, "GET", "/v2/team/app/manifests/v1"); resp.StatusCode != http.StatusOK {
		t.Fatalf("stale tag: %d; want 200", resp.StatusCode)
	}
	release := make(chan struct{})
	e.up.SetFault(holdBlob(held, heldBytes, release))
	leader := startSlowFill(t, e, "/v2/team/app/blobs/"+held.String())
	waitHalfway(t, e, int64(len(heldBytes)/2))

	b := newBrowser(t)
	page := e.proxyURL.String() + "/?refresh=1"
	b.do("load the page", chromedp.Navigate(page), chromedp.WaitVisible(chromedp.CSS(`[data-k="hit_ratio"]`)))
	s := e.scrapeMetrics()
	got := b.figures()
	checkFigures(t, got, s)
	checkHeldFill(t, got, held, len(heldBytes))
	checkRepos(t, got, s)
	if rows := eval[int](b, "count upstream events", `document.querySelectorAll("#upstream-events tbody tr").length`); rows != 2 {
		t.Errorf("%d recent upstream events listed; want the 429 and the 503", rows)
	}
	if d := eval[string](b, "read the style", `getComputedStyle(document.querySelector(".cards")).display`); d != "grid" {
		t.Errorf("the cards are laid out as %q; want grid: the inline style did not apply", d)
	}
	keepScreenshot(t, b)

	// The fill ends and a blob is served from the cache: the page shows
	// it by itself.
	close(release)
	if got, err := io.ReadAll(leader.Body); err != nil || !bytes.Equal(got, heldBytes) {
		t.Fatalf("held blob: %d bytes, %v", len(got), err)
	}
	waitFillsIdle(t, e)
	if resp, got := e.get(c, "GET", "/v2/team/lib/blobs/"+libDigest.String()); resp.StatusCode != http.StatusOK || !bytes.Equal(got, libLayer) {
		t.Fatalf("blob hit: %d", resp.StatusCode)
	}
	// Every blob request is counted once its handler returns, which may
	// be after its client has the last byte.
	s = waitMetrics(t, e, "5 blob misses, 3 blob hits, no fill", func(s scrape) bool {
		return s.get("regproxy_requests_total", "kind", "blob", "outcome", "miss") == 5 &&
			s.get("regproxy_requests_total", "kind", "blob", "outcome", "hit") == 3 &&
			s.get("regproxy_fills_in_flight") == 0
	})
	b.do("wait for the page to refresh itself", chromedp.Poll[chromedp.Void](fmt.Sprintf(
		`document.querySelector('[data-k="served_bytes"]').dataset.v === %q && document.querySelector('[data-k="fills_in_flight"]').dataset.v === "0"`,
		strconv.FormatFloat(s.get("regproxy_served_bytes_total"), 'f', -1, 64)),
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second)))
	checkFigures(t, b.figures(), s)
	checkBrowserTraffic(t, b, e.proxyURL.String())
}

// waitMetrics scrapes /metrics until cond holds, for 10 seconds at most.
func waitMetrics(t *testing.T, e *env, what string, cond func(scrape) bool) scrape {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s := e.scrapeMetrics()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics after 10s: want %s:\n%s", what, s.text)
		}
	}
}

// waitHalfway waits until the one fill in flight has received n bytes.
func waitHalfway(t *testing.T, e *env, n int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		fills, _ := e.statusJSON()["fills"].([]any)
		if len(fills) == 1 && fills[0].(map[string]any)["received"] == float64(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fills in flight %v; want one with %d bytes received", fills, n)
		}
	}
}

// checkHeldFill: the fill held halfway is listed with its progress.
func checkHeldFill(t *testing.T, got map[string]figure, d v1.Hash, size int) {
	t.Helper()
	if f := got["fill/"+d.String()+"/received"]; f.value != float64(size/2) {
		t.Errorf("fill received %v; want %d", f.value, size/2)
	}
	if f := got["fill/"+d.String()+"/size"]; f.value != float64(size) {
		t.Errorf("fill size %v; want %d", f.value, size)
	}
}

// checkRepos: both repositories are listed, the heavier first, and their
// bytes add up to the registry's.
func checkRepos(t *testing.T, got map[string]figure, s scrape) {
	t.Helper()
	app, lib := got["repo/registry.test/team/app/served_bytes"], got["repo/registry.test/team/lib/served_bytes"]
	if app.value <= lib.value || lib.value == 0 {
		t.Errorf("team/app served %v, team/lib %v; want both, team/app more", app.value, lib.value)
	}
	if got["repo/registry.test/team/lib/cached_bytes"].value != 0 || got["repo/registry.test/team/app/cached_bytes"].value == 0 {
		t.Errorf("from cache: team/app %v, team/lib %v; want only team/app's hits",
			got["repo/registry.test/team/app/cached_bytes"].value, got["repo/registry.test/team/lib/cached_bytes"].value)
	}
	if sum, want := app.value+lib.value+got["repo_other_bytes"].value, s.get("regproxy_served_bytes_total"); sum != want {
		t.Errorf("repositories add up to %v; /metrics says %v served", sum, want)
	}
}

// checkBrowserTraffic: the browser asked the proxy port for the page and
// its refreshes, and nothing else of anyone; nothing went wrong in it.
func checkBrowserTraffic(t *testing.T, b *browser, origin string) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	refreshes := 0
	for _, u := range b.requests {
		if !strings.HasPrefix(u, origin+"/") {
			t.Errorf("the browser asked for %s; want only %s/", u, origin)
		}
		if strings.Contains(u, "refresh=1") {
			refreshes++
		}
	}
	if refreshes < 2 {
		t.Errorf("the page was fetched %d times; want the load and its refreshes", refreshes)
	}
	for _, p := range b.problems {
		t.Errorf("browser: %s", p)
	}
}
