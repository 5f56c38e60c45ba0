package proxy

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/regproxy/regproxy/fill"
	"github.com/regproxy/regproxy/metrics"
)

// The status page: GET / for a browser, /status.json for tools. Like
// /metrics it is open to whoever reaches the proxy port, and it shows what
// /metrics shows plus three things no metric holds: the fills in flight
// (by digest, which names no repository), the last upstream errors and
// 429s (registry, host and kind of request, never a path), and the top
// repositories by bytes served, which are listed only where the operator
// turned on the tally (--status-repos, metrics.TrackRepositories): a
// repository's name is tenant data.
//
// Every figure that /metrics also serves is read from the same series in
// one gathering (metrics.Status), so the page and a scrape agree.

// Bounds of what the page lists.
const (
	statusTopRepos = 10
	statusMaxFills = 50
	// statusRefresh is how often the page reloads its figures; a request
	// may ask for another period with ?refresh=SECONDS (0: never).
	statusRefresh    = 5
	statusMaxRefresh = 3600
)

// statusReport is the page's data, and the body of /status.json. Its
// field names are a contract with tools (regproxy cache stats --server).
type statusReport struct {
	Time           time.Time        `json:"time"`
	Requests       int64            `json:"requests"` // every request, tunnels and these pages included
	CacheRequests  int64            `json:"cacheRequests"`
	CacheHits      int64            `json:"cacheHits"`
	HitRatio       float64          `json:"hitRatio"`
	ServedBytes    int64            `json:"servedBytes"`
	UpstreamBytes  int64            `json:"upstreamBytes"`
	SavedBytes     int64            `json:"savedBytes"`
	UpstreamErrors int64            `json:"upstreamErrors"`
	RateLimited    int64            `json:"rateLimited"`
	FillsInFlight  int64            `json:"fillsInFlight"` // regproxy_fills_in_flight
	Cache          *statusCache     `json:"cache"`         // null without a disk index (--storage azure)
	Registries     []statusRegistry `json:"registries"`
	Repositories   statusRepos      `json:"repositories"`
	Fills          []statusFill     `json:"fills"`
	MoreFills      int              `json:"moreFills,omitempty"` // fills in flight past statusMaxFills
	RecentUpstream []statusEvent    `json:"recentUpstream"`
}

type statusCache struct {
	Bytes   int64 `json:"bytes"`
	Entries int64 `json:"entries"`
	// Kinds are blob, manifest, tag and other.
	Kinds map[string]statusCount `json:"kinds"`
	// MaxBytes is the cap; absent without one. FreeBytes, FilesystemBytes
	// and MinFreeBytes are absent while unknown, MinFreeBytes also
	// without a floor.
	MaxBytes        *int64      `json:"maxBytes,omitempty"`
	FreeBytes       *int64      `json:"freeBytes,omitempty"`
	FilesystemBytes *int64      `json:"filesystemBytes,omitempty"`
	MinFreeBytes    *int64      `json:"minFreeBytes,omitempty"`
	Evicted         statusCount `json:"evicted"`
	// Loaded is false while the index still reads the store at start.
	Loaded bool `json:"loaded"`
}

type statusCount struct {
	Entries int64 `json:"entries"`
	Bytes   int64 `json:"bytes"`
}

type statusRegistry struct {
	Registry       string  `json:"registry"`
	CacheRequests  int64   `json:"cacheRequests"`
	CacheHits      int64   `json:"cacheHits"`
	HitRatio       float64 `json:"hitRatio"`
	ServedBytes    int64   `json:"servedBytes"`
	UpstreamBytes  int64   `json:"upstreamBytes"`
	SavedBytes     int64   `json:"savedBytes"`
	UpstreamErrors int64   `json:"upstreamErrors"`
	RateLimited    int64   `json:"rateLimited"`
}

type statusRepos struct {
	// Enabled says whether repositories are tallied (--status-repos).
	Enabled bool         `json:"enabled"`
	Top     []statusRepo `json:"top"`
	// OtherBytes is what the rest of the repositories were served.
	OtherBytes int64 `json:"otherBytes"`
}

type statusRepo struct {
	Registry    string `json:"registry"`
	Repository  string `json:"repository"`
	Requests    int64  `json:"requests"`
	ServedBytes int64  `json:"servedBytes"`
	CachedBytes int64  `json:"cachedBytes"`
}

type statusFill struct {
	Digest   string `json:"digest"`
	Size     *int64 `json:"size,omitempty"` // absent while unknown
	Received int64  `json:"received"`
	// State is waiting (for upstream's answer), downloading, relaying (not
	// cached: the spool is full) or committing.
	State   string `json:"state"`
	Readers int    `json:"readers"`
	Joiners int    `json:"joiners"`
}

type statusEvent struct {
	Time     time.Time `json:"time"`
	Registry string    `json:"registry"`
	Host     string    `json:"host"`
	Kind     string    `json:"kind"`
	Reason   string    `json:"reason"` // 429, 5xx or transport
	Status   int       `json:"status,omitempty"`
	Detail   string    `json:"detail,omitempty"`
}

// tallyRepo counts e in the status page's tally of repositories, if the
// operator turned it on, under the repository's canonical name (Docker
// Hub's official images with their library/ prefix).
func (p *Proxy) tallyRepo(e entry, registry, outcome string) {
	if e.repo == "" || !p.metrics.TracksRepositories() {
		return
	}
	_, repo := canonicalRepo(e.host, e.repo)
	p.metrics.ServedRepository(registry, repo, outcome, e.bytes)
}

// statusNow gathers the report.
func (p *Proxy) statusNow() (statusReport, error) {
	s, err := p.metrics.Status()
	if err != nil {
		return statusReport{}, err
	}
	rep := statusReport{
		Time: time.Now(), Requests: int64(s.Requests), CacheRequests: int64(s.CacheRequests),
		CacheHits: int64(s.CacheHits), HitRatio: s.HitRatio(), ServedBytes: int64(s.ServedBytes),
		UpstreamBytes: int64(s.UpstreamBytes), SavedBytes: int64(s.BytesSaved()),
		UpstreamErrors: int64(s.UpstreamErrors), RateLimited: int64(s.RateLimited),
		FillsInFlight: int64(s.FillsInFlight), Cache: cacheOf(s.Cache),
		Registries: []statusRegistry{}, RecentUpstream: []statusEvent{},
	}
	for _, r := range s.Registries {
		rep.Registries = append(rep.Registries, statusRegistry{Registry: r.Registry,
			CacheRequests: int64(r.CacheRequests), CacheHits: int64(r.CacheHits), HitRatio: r.HitRatio(),
			ServedBytes: int64(r.ServedBytes), UpstreamBytes: int64(r.UpstreamBytes), SavedBytes: int64(r.BytesSaved()),
			UpstreamErrors: int64(r.UpstreamErrors), RateLimited: int64(r.RateLimited)})
	}
	rep.Repositories = p.topRepos(rep.ServedBytes)
	rep.Fills, rep.MoreFills = fillsOf(p.fills.Fills())
	for _, e := range p.metrics.RecentUpstream() {
		rep.RecentUpstream = append(rep.RecentUpstream, statusEvent(e))
	}
	return rep, nil
}

// topRepos lists the repositories with the most bytes served, when the
// operator turned the tally on; served is every repository's total.
func (p *Proxy) topRepos(served int64) statusRepos {
	top, on := p.metrics.Repositories(statusTopRepos)
	rs := statusRepos{Enabled: on, Top: []statusRepo{}}
	if !on {
		return rs
	}
	rs.OtherBytes = served
	for _, r := range top {
		rs.Top = append(rs.Top, statusRepo{Registry: r.Registry, Repository: r.Repository,
			Requests: int64(r.Requests), ServedBytes: int64(r.ServedBytes), CachedBytes: int64(r.CachedBytes)})
		rs.OtherBytes -= int64(r.ServedBytes)
	}
	rs.OtherBytes = max(rs.OtherBytes, 0) // the tally and the counter are not read in one step
	return rs
}

func cacheOf(c *metrics.CacheStats) *statusCache {
	if c == nil {
		return nil
	}
	count := func(k metrics.KindStats) statusCount { return statusCount{k.Entries, k.Bytes} }
	t := c.Total()
	sc := &statusCache{Bytes: t.Bytes, Entries: t.Entries, Evicted: count(c.Evicted), Loaded: c.Loaded,
		Kinds: map[string]statusCount{"blob": count(c.Blobs), "manifest": count(c.Manifests),
			"tag": count(c.Tags), "other": count(c.Other)},
		FreeBytes: known(c.FreeBytes), FilesystemBytes: known(c.FilesystemBytes), MinFreeBytes: known(c.MinFreeBytes)}
	if c.MaxBytes > 0 {
		sc.MaxBytes = &c.MaxBytes
	}
	return sc
}

// known is &v, or nil for a negative v, which means unknown.
func known(v int64) *int64 {
	if v < 0 {
		return nil
	}
	return &v
}

// fillsOf turns up to statusMaxFills fills into the report's, and says
// how many more there are.
func fillsOf(fills []fill.Progress) ([]statusFill, int) {
	out := []statusFill{}
	for _, f := range fills[:min(len(fills), statusMaxFills)] {
		sf := statusFill{Digest: f.Digest.String(), Size: known(f.Size), Received: f.Received,
			Readers: f.Readers, Joiners: f.Joiners, State: "downloading"}
		switch {
		case !f.Started:
			sf.State = "waiting"
		case f.Verified:
			sf.State = "committing"
		case f.Relaying:
			sf.State = "relaying"
		}
		out = append(out, sf)
	}
	return out, len(fills) - len(out)
}

// serveIndex answers GET /: the status page for a browser, the plain text
// it always was for anyone else (curl sends Accept: */*).
func (p *Proxy) serveIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Add("Vary", "Accept")
	if !wantsHTML(r.Header.Values("Accept")) {
		p.serveIndexText(w, r)
		return
	}
	rep, err := p.statusNow()
	if err != nil {
		p.statusFailed(w, err)
		return
	}
	var b bytes.Buffer
	if err := statusPage.Execute(&b, p.pageOf(r, rep)); err != nil {
		p.statusFailed(w, err)
		return
	}
	setPageHeaders(w.Header())
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
	w.Write(b.Bytes())
}

// serveStatusJSON answers GET /status.json.
func (p *Proxy) serveStatusJSON(w http.ResponseWriter, r *http.Request) {
	rep, err := p.statusNow()
	if err != nil {
		p.statusFailed(w, err)
		return
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		p.statusFailed(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Write(append(b, '\n'))
}

func (p *Proxy) statusFailed(w http.ResponseWriter, err error) {
	p.log.Warn("status page", "err", err)
	http.Error(w, "status unavailable", http.StatusInternalServerError)
}

// wantsHTML reports whether a request's Accept header asks for a page: it
// names text/html (or application/xhtml+xml) with a q above zero, and
// rates text/plain no higher. No Accept, and */* alone (curl's), get the
// text.
func wantsHTML(accept []string) bool {
	var html, plain float64
	for _, h := range accept {
		for _, part := range strings.Split(h, ",") {
			typ, params, _ := strings.Cut(part, ";")
			switch q := qValue(params); strings.ToLower(strings.TrimSpace(typ)) {
			case "text/html", "application/xhtml+xml":
				html = max(html, q)
			case "text/plain":
				plain = max(plain, q)
			}
		}
	}
	return html > 0 && html >= plain
}

// qValue is the weight among a media range's parameters (RFC 9110,
// section 12.4.2): 1 when absent, 0 when malformed.
func qValue(params string) float64 {
	for _, p := range strings.Split(params, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "q") {
			continue
		}
		q, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || q < 0 || q > 1 {
			return 0
		}
		return q
	}
	return 1
}

// refreshOf is the page's refresh period in seconds: ?refresh=N, else
// statusRefresh; 0 means the page does not refresh.
func refreshOf(r *http.Request) int {
	n, err := strconv.Atoi(r.URL.Query().Get("refresh"))
	if err != nil || n < 0 {
		return statusRefresh
	}
	return min(n, statusMaxRefresh)
}
