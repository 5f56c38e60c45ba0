package proxy_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/net/html"

	"github.com/regproxy/regproxy/metrics"
	"github.com/regproxy/regproxy/proxy"
)

// browserAccept is what Chromium sends for a page.
const browserAccept = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8"

// getPage GETs path from the proxy port with accept (none if empty).
func (e *env) getPage(method, path, accept string) (*http.Response, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.proxyURL.String()+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, string(body)
}

// TestIndexNegotiation: GET / is the status page for a client that asks
// for HTML, and the plain text it always was for curl (*/*), for a client
// that sends no Accept, and for one that prefers text/plain.
func TestIndexNegotiation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tc := range []struct {
		name, method, accept string
		html                 bool
	}{
		{"no Accept", "GET", "", false},
		{"curl", "GET", "*/*", false},
		{"text/*", "GET", "text/*", false},
		{"plain preferred", "GET", "text/plain, text/html;q=0.5", false},
		{"html refused", "GET", "text/html;q=0, */*", false},
		{"malformed q", "GET", "text/html;q=high", false},
		{"browser", "GET", browserAccept, true},
		{"text/html alone", "GET", "text/html", true},
		{"xhtml", "GET", "application/xhtml+xml", true},
		{"html and plain alike", "GET", "text/plain;q=0.8, TEXT/HTML;q=0.8", true},
		{"HEAD from a browser", "HEAD", browserAccept, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.getPage(tc.method, "/", tc.accept)
			ct := resp.Header.Get("Content-Type")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if got := strings.HasPrefix(ct, "text/html"); got != tc.html {
				t.Errorf("Content-Type %q; want HTML %v", ct, tc.html)
			}
			if !tc.html && !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("Content-Type %q; want text/plain", ct)
			}
			if !strings.Contains(resp.Header.Get("Vary"), "Accept") {
				t.Errorf("Vary %q; want Accept: the answer depends on it", resp.Header.Get("Vary"))
			}
			switch {
			case tc.method == "HEAD" && body != "":
				t.Errorf("HEAD answered with a body of %d bytes", len(body))
			case tc.method == "HEAD":
			case !tc.html && !strings.HasPrefix(body, "regproxy: a caching HTTPS proxy") || !tc.html && !strings.Contains(body, "/ca.crt"):
				t.Errorf("text body:\n%s\nwant the plain description", body)
			case tc.html && !strings.Contains(body, `<main id="main">`):
				t.Errorf("HTML body:\n%s\nwant the status page", body)
			}
		})
	}
}

// TestStatusPageSelfContained: the page loads nothing from anywhere: no
// script, style, font, image or frame by URL, no @import, no url() in its
// style; its links go to this port's own paths; its policy lets the
// browser load nothing else, and allows the inline style and script by
// their hashes.
func TestStatusPageSelfContained(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.pull(pushed(t, e, "team/app", 2, 1000), "v1") // figures in every table
	resp, page := e.getPage("GET", "/", browserAccept)
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
		t.Errorf("Content-Security-Policy %q; want default-src 'none' and connect-src 'self'", csp)
	}
	inline := map[string]string{}
	outside := checkTags(t, page, inline)
	for _, el := range []string{"style", "script"} {
		sum := sha256.Sum256([]byte(inline[el]))
		if h := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, el+"-src "+h) {
			t.Errorf("the policy does not allow the inline %s by its hash %s: %q", el, h, csp)
		}
	}
	for _, bad := range []string{"@import", "url(", "@font-face", "://"} {
		if strings.Contains(inline["style"], bad) {
			t.Errorf("the style holds %q", bad)
		}
	}
	// The node set-up commands (in <pre>) name this port; nothing else
	// names a URL, in text or script.
	if strings.Contains(outside, "://") || strings.Contains(inline["script"], "://") {
		t.Errorf("the page names a URL outside its set-up commands:\n%s", outside)
	}
}

// pushed pushes a random image of layers layers of size bytes as repo:v1
// and returns repo.
func pushed(t *testing.T, e *env, repo string, layers int, size int64) string {
	t.Helper()
	e.up.Push(t, repo, "v1", e.up.RandomImage(t, layers, size))
	return repo
}

// urlAttrs are the attributes that make a browser load or go to a URL.
var urlAttrs = map[string]bool{"src": true, "href": true, "action": true, "formaction": true, "srcset": true,
	"poster": true, "data": true, "background": true, "manifest": true, "xlink:href": true, "ping": true}

// checkTags walks page's tags: every URL attribute must be this port's
// own path or an empty data: URL, and no script may have a src. It keeps
// the text of the inline style and script in inline, and returns the
// rest of the page's text outside <pre>.
func checkTags(t *testing.T, page string, inline map[string]string) string {
	t.Helper()
	z := html.NewTokenizer(strings.NewReader(page))
	var outside strings.Builder
	var in string // the element whose text follows
	for {
		switch z.Next() {
		case html.ErrorToken:
			return outside.String()
		case html.StartTagToken, html.SelfClosingTagToken:
			tok := z.Token()
			in = tok.Data
			for _, a := range tok.Attr {
				if tok.Data == "script" && a.Key == "src" {
					t.Errorf("<script src=%q>", a.Val)
				}
				if urlAttrs[a.Key] && !ownURL(a.Val) {
					t.Errorf("<%s %s=%q> reaches outside the proxy port", tok.Data, a.Key, a.Val)
				}
				if a.Key == "style" {
					t.Errorf("<%s style=%q>: the policy allows no inline style attribute", tok.Data, a.Val)
				}
			}
		case html.EndTagToken:
			in = ""
		case html.TextToken:
			switch text := string(z.Text()); in {
			case "style", "script":
				inline[in] += text
			case "pre":
			default:
				outside.WriteString(text)
			}
		}
	}
}

// ownURL reports whether a URL attribute stays on the proxy port: a path
// of its own, or the empty data: URL of the favicon.
func ownURL(v string) bool {
	return v == "data:," || strings.HasPrefix(v, "/") && !strings.HasPrefix(v, "//")
}

// statusJSON fetches /status.json.
func (e *env) statusJSON() map[string]any {
	e.t.Helper()
	resp, body := e.getPage("GET", "/status.json", "")
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "application/json" {
		e.t.Fatalf("GET /status.json: %d, %q", resp.StatusCode, ct)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		e.t.Fatalf("GET /status.json: %v\n%s", err, body)
	}
	return v
}

// TestStatusJSONMatchesMetrics: the JSON's figures are /metrics' after
// misses and hits; repositories are not named unless the tally is on.
func TestStatusJSONMatchesMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	repo := pushed(t, e, "team/secret-app", 2, 5000)
	e.pull(repo, "v1")
	waitFillsIdle(t, e)
	e.pull(repo, "v1")
	s := waitFillsIdle(t, e)
	js := e.statusJSON()
	reg := []string{"registry", "registry.test"}
	for key, want := range map[string]float64{
		"servedBytes":    s.get("regproxy_served_bytes_total"),
		"upstreamBytes":  s.get("regproxy_upstream_bytes_total"),
		"cacheHits":      s.get("regproxy_requests_total", append(reg, "outcome", "hit")...),
		"cacheRequests":  s.get("regproxy_requests_total", append(reg, "outcome", "hit")...) + s.get("regproxy_requests_total", append(reg, "outcome", "miss")...),
		"fillsInFlight":  0,
		"upstreamErrors": 0,
	} {
		if js[key] != want {
			t.Errorf("status.json %s = %v; /metrics says %v", key, js[key], want)
		}
	}
	if want := float64(4); js["cacheHits"] != want {
		t.Errorf("cacheHits = %v; want %v (the tag, the config, two layers)", js["cacheHits"], want)
	}
	repos := js["repositories"].(map[string]any)
	if repos["enabled"] != false || len(repos["top"].([]any)) != 0 {
		t.Errorf("repositories %v; want none listed, tally off", repos)
	}
	if _, page := e.getPage("GET", "/", browserAccept); strings.Contains(page, "secret-app") ||
		!strings.Contains(page, `id="repos-off"`) {
		t.Errorf("the page names the repository, or does not say the list is off")
	}
	if js["cache"] != nil {
		t.Errorf("cache %v without a disk index; want null", js["cache"])
	}
}

// TestStatusReposOptIn: with the tally on (--status-repos), the page and
// the JSON list repositories by bytes served, under their canonical
// names, and their bytes add up to the registry's.
func TestStatusReposOptIn(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := metrics.New()
	m.TrackRepositories(metrics.DefaultTrackedRepos)
	e.configure = func(c *proxy.Config) { c.Metrics = m }
	e.restart()
	e.pull(pushed(t, e, "team/big", 1, 50000), "v1")
	e.pull(pushed(t, e, "team/small", 1, 1000), "v1")
	s := waitFillsIdle(t, e)
	repos := e.statusJSON()["repositories"].(map[string]any)
	top := repos["top"].([]any)
	if repos["enabled"] != true || len(top) != 2 {
		t.Fatalf("repositories %v; want both, tally on", repos)
	}
	var sum float64
	for i, name := range []string{"team/big", "team/small"} {
		r := top[i].(map[string]any)
		if r["repository"] != name || r["registry"] != "registry.test" {
			t.Errorf("top[%d] = %v; want registry.test %s", i, r, name)
		}
		sum += r["servedBytes"].(float64)
	}
	if want := s.get("regproxy_served_bytes_total", "registry", "registry.test"); sum != want || repos["otherBytes"] != 0.0 {
		t.Errorf("repositories add up to %v, others %v; /metrics says registry.test served %v", sum, repos["otherBytes"], want)
	}
	if _, page := e.getPage("GET", "/", browserAccept); !strings.Contains(page, "registry.test/team/big") {
		t.Errorf("the page does not list team/big")
	}
}

// TestStatusPageOpenUnderHtpasswd: like /metrics, the page and its JSON
// ask for no credentials, and the set-up commands show a placeholder for
// the user.
func TestStatusPageOpenUnderHtpasswd(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.stop()
	e.users = testUsers(t)
	e.start()
	resp, page := e.getPage("GET", "/", browserAccept)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, "--proxy http://USER:PASSWORD@") {
		t.Errorf("GET / under --htpasswd: %d; want the page with a placeholder user", resp.StatusCode)
	}
	e.statusJSON()
}
