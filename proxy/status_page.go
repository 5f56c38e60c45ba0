package proxy

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"html/template"
	"net/http"
	"time"

	"github.com/regproxy/regproxy/internal/bytesize"
)

// The status page is one self-contained HTML document: its style and its
// script are inline, it links to nothing but this port's own /metrics,
// /status.json and /ca.crt, and its Content-Security-Policy lets the
// browser load nothing else (nodes are often air-gapped, and the page must
// not make a viewer's browser call out). Every figure carries its exact
// value in data-v beside the rounded text, for tests and for copying.

// pageData is what the template renders.
type pageData struct {
	statusReport
	Refresh int    // seconds between reloads; 0: never
	Help    string // the plain description of GET /, with a node's set-up commands
}

func (p *Proxy) pageOf(r *http.Request, rep statusReport) pageData {
	return pageData{statusReport: rep, Refresh: refreshOf(r), Help: p.indexHelp(r)}
}

// setPageHeaders sets the page's security headers. The policy allows the
// inline style and script by their hashes, requests to this port only (the
// refresh), and nothing else.
func setPageHeaders(h http.Header) {
	h.Set("Content-Security-Policy", pagePolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
}

var pagePolicy = "default-src 'none'; style-src '" + cspHash(pageCSS) + "'; script-src '" + cspHash(pageJS) +
	"'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// cspHash is a CSP hash source for an inline element's text (CSP Level 3,
// section 2.3.1).
func cspHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

// percent writes a ratio as a percentage with one decimal.
func percent(r float64) string { return fmt.Sprintf("%.1f%%", r*100) }

// share is part over whole, or 0 when whole is not positive.
func share(part, whole int64) float64 {
	if whole <= 0 {
		return 0
	}
	return float64(part) / float64(whole)
}

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"bytes":   bytesize.Format,
	"percent": percent,
	"share":   share,
	"clock":   func(t time.Time) string { return t.UTC().Format("15:04:05 UTC") },
	"short":   func(d string) string { return d[:min(len(d), len("sha256:")+12)] },
}).Parse(pageHTML))

const pageHTML = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>regproxy status</title>
<link rel="icon" href="data:,">
<style>` + pageCSS + `</style>
{{if .Refresh}}<noscript><meta http-equiv="refresh" content="{{.Refresh}}"></noscript>{{end}}
</head>
<body data-refresh="{{.Refresh}}">
<p id="stale">Not updating: the proxy did not answer the last refresh.</p>
<main id="main">
<header><h1>regproxy</h1><p>updated <time datetime="{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}">{{clock .Time}}</time>{{if .Refresh}}, every {{.Refresh}} s{{end}}</p></header>
<section class="cards">
<div class="card"><h2>Hit ratio</h2>
<p class="big" data-k="hit_ratio" data-v="{{.HitRatio}}">{{if .CacheRequests}}{{percent .HitRatio}}{{else}}–{{end}}</p>
<p><span data-k="cache_hits" data-v="{{.CacheHits}}">{{.CacheHits}}</span> of <span data-k="cache_requests" data-v="{{.CacheRequests}}">{{.CacheRequests}}</span> cache requests needed no fetch of their own</p></div>
<div class="card"><h2>Bytes saved</h2>
<p class="big" data-k="saved_bytes" data-v="{{.SavedBytes}}">{{bytes .SavedBytes}}</p>
<p>served <span data-k="served_bytes" data-v="{{.ServedBytes}}">{{bytes .ServedBytes}}</span>, fetched upstream <span data-k="upstream_bytes" data-v="{{.UpstreamBytes}}">{{bytes .UpstreamBytes}}</span></p></div>
<div class="card"><h2>Cache</h2>{{with .Cache}}
<p class="big" data-k="cache_bytes" data-v="{{.Bytes}}">{{bytes .Bytes}}</p>
{{with .MaxBytes}}<meter min="0" max="{{.}}" value="{{$.Cache.Bytes}}" high="{{.}}" optimum="0"></meter>
<p><span data-k="cache_use" data-v="{{share $.Cache.Bytes .}}">{{percent (share $.Cache.Bytes .)}}</span> of the <span data-k="cache_max_bytes" data-v="{{.}}">{{bytes .}}</span> cap</p>{{else}}<p>no cap (--cache-max-size)</p>{{end}}
{{else}}<p class="big">–</p><p>size unknown: no disk index (--storage azure)</p>{{end}}</div>
<div class="card"><h2>Fills in flight</h2>
<p class="big" data-k="fills_in_flight" data-v="{{.FillsInFlight}}">{{.FillsInFlight}}</p><p>blob downloads into the cache</p></div>
<div class="card"><h2>Upstream trouble</h2>
<p class="big"><span data-k="upstream_errors" data-v="{{.UpstreamErrors}}">{{.UpstreamErrors}}</span> / <span data-k="rate_limited" data-v="{{.RateLimited}}">{{.RateLimited}}</span></p><p>errors / 429s since start</p></div>
</section>
{{with .Cache}}<section><h2>Cache contents</h2>
{{if not .Loaded}}<p class="note">The index is still reading the store: these figures count only what was used since the start.</p>{{end}}
<table><thead><tr><th>kind</th><th class="n">entries</th><th class="n">bytes</th></tr></thead><tbody>
{{range $k, $c := .Kinds}}<tr><td>{{$k}}</td><td class="n" data-k="cache_entries/{{$k}}" data-v="{{$c.Entries}}">{{$c.Entries}}</td><td class="n" data-k="cache_bytes/{{$k}}" data-v="{{$c.Bytes}}">{{bytes $c.Bytes}}</td></tr>
{{end}}<tr class="total"><td>all</td><td class="n" data-k="cache_entries" data-v="{{.Entries}}">{{.Entries}}</td><td class="n">{{bytes .Bytes}}</td></tr>
</tbody></table>
<p>{{with .FreeBytes}}<span data-k="cache_free_bytes" data-v="{{.}}">{{bytes .}}</span> free{{with $.Cache.FilesystemBytes}} of {{bytes .}}{{end}}{{with $.Cache.MinFreeBytes}}, keeping at least {{bytes .}} free{{end}}; {{end}}<span data-k="evicted_entries" data-v="{{.Evicted.Entries}}">{{.Evicted.Entries}}</span> entries ({{bytes .Evicted.Bytes}}) evicted since the start.</p>
</section>{{end}}
<section><h2>Registries</h2>
{{if .Registries}}<table><thead><tr><th>registry</th><th class="n">cache requests</th><th class="n">hit ratio</th><th class="n">served</th><th class="n">fetched upstream</th><th class="n">saved</th><th class="n">errors</th><th class="n">429s</th></tr></thead><tbody>
{{range .Registries}}<tr><td>{{.Registry}}</td><td class="n" data-k="registry/{{.Registry}}/cache_requests" data-v="{{.CacheRequests}}">{{.CacheRequests}}</td><td class="n" data-k="registry/{{.Registry}}/hit_ratio" data-v="{{.HitRatio}}">{{if .CacheRequests}}{{percent .HitRatio}}{{else}}–{{end}}</td><td class="n" data-k="registry/{{.Registry}}/served_bytes" data-v="{{.ServedBytes}}">{{bytes .ServedBytes}}</td><td class="n" data-k="registry/{{.Registry}}/upstream_bytes" data-v="{{.UpstreamBytes}}">{{bytes .UpstreamBytes}}</td><td class="n" data-k="registry/{{.Registry}}/saved_bytes" data-v="{{.SavedBytes}}">{{bytes .SavedBytes}}</td><td class="n" data-k="registry/{{.Registry}}/upstream_errors" data-v="{{.UpstreamErrors}}">{{.UpstreamErrors}}</td><td class="n" data-k="registry/{{.Registry}}/rate_limited" data-v="{{.RateLimited}}">{{.RateLimited}}</td></tr>
{{end}}</tbody></table>{{else}}<p class="note">No registry traffic yet.</p>{{end}}
</section>
<section><h2>Top repositories by bytes served</h2>
{{with .Repositories}}{{if not .Enabled}}<p class="note" id="repos-off">Repositories are not listed: start regproxy with --status-repos to list them. Everyone who reaches this port can read this page.</p>
{{else if .Top}}<table><thead><tr><th>repository</th><th class="n">requests</th><th class="n">served</th><th class="n">from cache</th></tr></thead><tbody>
{{range .Top}}<tr><td>{{.Registry}}/{{.Repository}}</td><td class="n" data-k="repo/{{.Registry}}/{{.Repository}}/requests" data-v="{{.Requests}}">{{.Requests}}</td><td class="n" data-k="repo/{{.Registry}}/{{.Repository}}/served_bytes" data-v="{{.ServedBytes}}">{{bytes .ServedBytes}}</td><td class="n" data-k="repo/{{.Registry}}/{{.Repository}}/cached_bytes" data-v="{{.CachedBytes}}">{{bytes .CachedBytes}}</td></tr>
{{end}}{{if .OtherBytes}}<tr class="total"><td>all other repositories</td><td></td><td class="n" data-k="repo_other_bytes" data-v="{{.OtherBytes}}">{{bytes .OtherBytes}}</td><td></td></tr>{{end}}
</tbody></table>{{else}}<p class="note">Nothing served yet.</p>{{end}}{{end}}
</section>
<section><h2>Fills in flight</h2>
{{if .Fills}}<table><thead><tr><th>blob</th><th>state</th><th>progress</th><th class="n">received</th><th class="n">size</th><th class="n">readers</th></tr></thead><tbody>
{{range .Fills}}{{$f := .}}<tr><td><code title="{{.Digest}}">{{short .Digest}}</code></td><td>{{.State}}</td><td>{{with .Size}}<progress max="{{.}}" value="{{$f.Received}}"></progress>{{else}}<progress></progress>{{end}}</td><td class="n" data-k="fill/{{.Digest}}/received" data-v="{{.Received}}">{{bytes .Received}}</td><td class="n" data-k="fill/{{.Digest}}/size" data-v="{{with .Size}}{{.}}{{else}}-1{{end}}">{{with .Size}}{{bytes .}}{{else}}unknown{{end}}</td><td class="n">{{.Readers}}</td></tr>
{{end}}</tbody></table>{{if .MoreFills}}<p class="note">and {{.MoreFills}} more</p>{{end}}{{else}}<p class="note">None.</p>{{end}}
</section>
<section><h2>Recent upstream errors and 429s</h2>
{{if .RecentUpstream}}<table id="upstream-events"><thead><tr><th>time</th><th>registry</th><th>host</th><th>request</th><th>answer</th><th>detail</th></tr></thead><tbody>
{{range .RecentUpstream}}<tr><td>{{clock .Time}}</td><td>{{.Registry}}</td><td>{{.Host}}</td><td>{{.Kind}}</td><td>{{if .Status}}{{.Status}}{{else}}none{{end}}</td><td>{{.Detail}}</td></tr>
{{end}}</tbody></table>{{else}}<p class="note">None since the start.</p>{{end}}
</section>
</main>
<footer>
<p><a href="/metrics">/metrics</a> · <a href="/status.json">/status.json</a> · <a href="/ca.crt">/ca.crt</a></p>
<details><summary>Set up a node</summary><pre>{{.Help}}</pre></details>
</footer>
<script>` + pageJS + `</script>
</body>
</html>
`

// pageCSS styles the page, light or dark as the viewer's system is.
const pageCSS = `
:root{color-scheme:light dark;--fg:#1d2330;--mute:#5d6675;--bg:#f5f6f8;--card:#fff;--line:#dde1e7;--accent:#2f6fde}
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ef;--mute:#9aa3b2;--bg:#14171c;--card:#1d2128;--line:#323843;--accent:#6f9ef5}}
*{box-sizing:border-box}
body{margin:0;padding:1.5rem;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;align-items:baseline;gap:1rem;flex-wrap:wrap}
h1{font-size:1.5rem;margin:0}
h2{font-size:1rem;margin:1.5rem 0 .5rem}
header p,.card p,.note,footer{color:var(--mute)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(13rem,1fr));gap:1rem;margin-top:1rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.75rem 1rem}
.card h2{margin:0;font-size:.8rem;text-transform:uppercase;letter-spacing:.05em;color:var(--mute)}
.card p{margin:.25rem 0 0}
.card .big{font-size:1.9rem;font-weight:600;color:var(--fg)}
meter,progress{width:100%;height:.8rem}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line)}
th,td{padding:.35rem .6rem;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{font-size:.8rem;color:var(--mute);font-weight:600}
.n{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:600}
td progress{min-width:8rem}
code{font-size:.9em}
a{color:var(--accent)}
footer{margin-top:2rem}
pre{background:var(--card);border:1px solid var(--line);padding:.75rem;overflow-x:auto}
#stale{display:none;margin:0 0 1rem;padding:.5rem 1rem;border-radius:6px;background:#b3261e;color:#fff}
body.stale #stale{display:block}
`

// pageJS reloads the figures every data-refresh seconds: it fetches the
// page again and swaps its <main>, so the view neither flickers nor loses
// its scroll position. A failed fetch shows the "not updating" banner.
const pageJS = `
(function () {
  var every = Number(document.body.dataset.refresh) * 1000;
  if (!(every > 0)) return;
  function tick() {
    fetch(location.href, {headers: {Accept: "text/html"}, cache: "no-store"})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("main");
        if (!next) throw new Error("no main");
        document.getElementById("main").replaceWith(next);
        document.body.classList.remove("stale");
      })
      .catch(function () { document.body.classList.add("stale"); })
      .finally(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
`
