package proxy_test

import (
	"bytes"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/regproxy/regproxy/ca"
	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/internal/testupstream"
	"github.com/regproxy/regproxy/proxy"
)

const day = 24 * time.Hour

// ttlEnv is an env whose proxy has rules (pattern, TTL, pattern, TTL…),
// and a client.
type ttlEnv struct {
	*env
	c *http.Client
}

func newTTLEnv(t *testing.T, rules ...string) *ttlEnv {
	t.Helper()
	return newTTLEnvWith(t, time.Hour, rules...)
}

// newTTLEnvWith is newTTLEnv with a default TTL other than an hour.
func newTTLEnvWith(t *testing.T, def time.Duration, rules ...string) *ttlEnv {
	t.Helper()
	e := newEnv(t)
	e.stop()
	e.ttl = def
	var parsed []proxy.TTLRule
	for i := 0; i+1 < len(rules); i += 2 {
		ttl, err := time.ParseDuration(rules[i+1])
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, proxy.TTLRule{Pattern: regexp.MustCompile(rules[i]), TTL: ttl})
	}
	e.configure = func(cfg *proxy.Config) { cfg.TTLRules = parsed }
	e.start()
	return &ttlEnv{env: e, c: e.client()}
}

func (e *ttlEnv) restart() {
	e.env.restart()
	e.c = e.client()
}

// get GETs r:tag through the proxy and checks what that cost upstream:
// wantGET manifest GETs, wantHEAD manifest HEADs, and nothing else.
func (e *ttlEnv) get(step, tag string, wantGET, wantHEAD int64) []byte {
	e.t.Helper()
	e.up.ResetCounts()
	resp, body := e.env.get(e.c, http.MethodGet, "/v2/r/manifests/"+tag)
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("%s: GET r:%s: status %d", step, tag, resp.StatusCode)
	}
	g, h := e.up.Count("GET manifest"), e.up.Count("HEAD manifest")
	if g != wantGET || h != wantHEAD || e.up.Total() != g+h {
		e.t.Fatalf("%s: upstream manifest GET %d HEAD %d, %d requests in all; want %d and %d, and nothing else",
			step, g, h, e.up.Total(), wantGET, wantHEAD)
	}
	return body
}

// TestTTLZeroRevalidatesEveryRequest: a tag whose rule says 0 costs one
// HEAD upstream on every request, and no manifest GET while its digest is
// unchanged; a move upstream is seen at the next request; while upstream
// fails, the cached copy is served.
func TestTTLZeroRevalidatesEveryRequest(t *testing.T) {
	t.Parallel()
	e := newTTLEnv(t, `:latest$`, "0s")
	e.up.Push(t, "r", "latest", e.up.RandomImage(t, 1, 1000))

	first := e.get("first", "latest", 1, 0)
	for _, step := range []string{"second, same instant", "third"} {
		if got := e.get(step, "latest", 0, 1); !bytes.Equal(got, first) {
			t.Fatalf("%s: a different manifest", step)
		}
	}
	e.clock.Advance(time.Second)
	e.get("a second later", "latest", 0, 1)

	moved := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "r", "latest", moved)
	want, _ := moved.RawManifest()
	if got := e.get("tag moved upstream", "latest", 1, 1); !bytes.Equal(got, want) {
		t.Fatal("after the tag moved upstream: the old manifest; want the new one at once")
	}

	for _, status := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		e.up.SetFault(testupstream.FailWith(status, "HEAD manifest", "GET manifest"))
		if got := e.get("upstream down", "latest", 0, 1); !bytes.Equal(got, want) {
			t.Fatalf("upstream %d: not the cached (stale) manifest", status)
		}
	}
	e.up.SetFault(nil)
	e.get("upstream back", "latest", 0, 1)
}

// TestTTLRulesFirstMatchWins: rules are tried in order, the first match
// decides, and tags that no rule matches get --manifest-ttl (ten minutes
// here). A versioned tag kept for ten days costs no manifest GET in that
// time, only the HEAD with which regproxy checks, once its knowledge is
// older than openTTL (15 minutes), that the repository is still open to
// the client: the same HEAD revalidates the tag.
func TestTTLRulesFirstMatchWins(t *testing.T) {
	t.Parallel()
	e := newTTLEnvWith(t, 10*time.Minute,
		`:v1\.0$`, "0s", // before the next rule, which would match v1.0 too
		`:v[0-9]+(\.[0-9]+)*$`, "240h",
		`:latest$`, "0s")
	for _, tag := range []string{"v1.0", "v1.2", "main"} {
		e.up.Push(t, "r", tag, e.up.RandomImage(t, 1, 1000))
		e.get("first "+tag, tag, 1, 0)
	}
	e.clock.Advance(11 * time.Minute)
	e.get("v1.2, ten days", "v1.2", 0, 0)
	e.get("v1.0, the first rule: zero", "v1.0", 0, 1)
	e.get("main, no rule, past the default", "main", 0, 1)
	e.get("main, revalidated", "main", 0, 0)

	for i := range 3 {
		e.clock.Advance(3 * day)
		e.get(fmt.Sprintf("v1.2, %d days on: the repository's openness is checked", 3*(i+1)), "v1.2", 0, 1)
		e.get("v1.2, right after", "v1.2", 0, 0)
	}
	e.restart()
	e.get("v1.2 after a restart", "v1.2", 0, 0)
	e.get("v1.0 after a restart", "v1.0", 0, 1)
}

// TestTTLZeroHeadThenDigest: dockerd and containerd HEAD the tag and GET
// by digest. With a TTL of zero each pull costs one HEAD upstream and
// nothing else once the manifest is cached.
func TestTTLZeroHeadThenDigest(t *testing.T) {
	t.Parallel()
	e := newTTLEnv(t, `:latest$`, "0s")
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "r", "latest", img)
	d, _ := img.Digest()
	e.get("first", "latest", 1, 0)
	c := e.c
	for i := range 3 {
		e.up.ResetCounts()
		resp, _ := e.env.get(c, http.MethodHead, "/v2/r/manifests/latest")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != d.String() {
			t.Fatalf("pull %d: HEAD %d %q", i, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
		}
		if resp, _ := e.env.get(c, http.MethodGet, "/v2/r/manifests/"+d.String()); resp.StatusCode != http.StatusOK {
			t.Fatalf("pull %d: GET by digest %d", i, resp.StatusCode)
		}
		if n, h := e.up.Total(), e.up.Count("HEAD manifest"); n != 1 || h != 1 {
			t.Fatalf("pull %d: %d requests upstream, %d HEADs of the manifest; want the one HEAD", i, n, h)
		}
	}
}

// TestTTLRulesRefused: New refuses a rule without a pattern or with a
// negative TTL.
func TestTTLRulesRefused(t *testing.T) {
	t.Parallel()
	authority, err := ca.LoadOrCreate(filepath.Join(t.TempDir(), "ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, rule := range []proxy.TTLRule{
		{Pattern: nil, TTL: time.Hour},
		{Pattern: regexp.MustCompile("x"), TTL: -time.Second},
	} {
		rules := []proxy.TTLRule{{Pattern: regexp.MustCompile("ok"), TTL: 0}, rule}
		if _, err := proxy.New(proxy.Config{CA: authority, Store: cachestore.NewMemory(), TTLRules: rules}); err == nil {
			t.Errorf("New with rule %+v: no error", rule)
		}
	}
}
