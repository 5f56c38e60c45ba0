package main

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/regproxy/regproxy/internal/testupstream"
	"github.com/regproxy/regproxy/proxy"
)

// ttlDay is a day as a TTL.
const ttlDay = 24 * time.Hour

func TestParseTTLRule(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		pattern string
		ttl     time.Duration
		err     string // "" when accepted; else a part of the error
	}{
		{in: `:latest$=0`, pattern: `:latest$`, ttl: 0},
		{in: `:latest$=0s`, pattern: `:latest$`, ttl: 0},
		{in: `:latest$=0d`, pattern: `:latest$`, ttl: 0},
		{in: `:v[0-9]=10d`, pattern: `:v[0-9]`, ttl: 10 * ttlDay},
		{in: `^docker\.io/library/=90m`, pattern: `^docker\.io/library/`, ttl: 90 * time.Minute},
		{in: `:v[0-9]{1,3}\.=1h`, pattern: `:v[0-9]{1,3}\.`, ttl: time.Hour}, // the comma stays
		{in: `a=b=1h`, pattern: `a=b`, ttl: time.Hour},                       // split at the last "="
		{in: `(?i):LATEST$=0`, pattern: `(?i):LATEST$`, ttl: 0},
		{in: `.*=1h30m`, pattern: `.*`, ttl: 90 * time.Minute},
		{in: `:latest$`, err: "want REGEX=DURATION"},
		{in: `=1h`, err: "empty REGEX"},
		{in: `(=1h`, err: "missing closing )"},
		{in: `(?=x)=1h`, err: "invalid or unsupported Perl syntax"},
		{in: `x=`, err: "invalid duration"},
		{in: `x=abc`, err: "invalid duration"},
		{in: `x=-1h`, err: "invalid duration"},
		{in: `x=1.5d`, err: "invalid duration"},
		{in: `x=1h=`, err: "invalid duration"},
	} {
		r, err := parseTTLRule(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), `"`+strings.ReplaceAll(tc.in, `\`, `\\`)+`"`) {
				t.Errorf("parseTTLRule(%q) = %v, %v; want an error quoting it, with %q", tc.in, r.Pattern, err, tc.err)
			}
			continue
		}
		if err != nil || r.Pattern.String() != tc.pattern || r.TTL != tc.ttl {
			t.Errorf("parseTTLRule(%q) = %v, %v, %v; want %s, %v", tc.in, r.Pattern, r.TTL, err, tc.pattern, tc.ttl)
		}
	}
}

// firstTTL is what the proxy does with rules: the first match decides;
// ok is false when none matches.
func firstTTL(rules []proxy.TTLRule, name string) (ttl time.Duration, ok bool) {
	for _, r := range rules {
		if r.Pattern.MatchString(name) {
			return r.TTL, true
		}
	}
	return 0, false
}

// TestRpardiniRules maps rpardini's tiers: a REGEX must match at the
// start of the tag, as in nginx's ^/v2/(.*)/manifests/REGEX, and a tier
// with only one of its two variables set gets rpardini's default for the
// other.
func TestRpardiniRules(t *testing.T) {
	t.Parallel()
	const none = -1
	for _, tc := range []struct {
		name string
		env  map[string]string
		want map[string]time.Duration // tag name → TTL, none for no rule
	}{
		{"unset", nil, map[string]time.Duration{"docker.io/library/nginx:stable": none, "docker.io/library/nginx:1.27.0": none}},
		{"rpardini's defaults, as its Dockerfile sets them", map[string]string{
			"MANIFEST_CACHE_PRIMARY_REGEX": "(stable|nightly|production|test)", "MANIFEST_CACHE_PRIMARY_TIME": "10m",
			"MANIFEST_CACHE_SECONDARY_REGEX": `(.*)(\d|\.)+(.*)(\d|\.)+(.*)(\d|\.)+`, "MANIFEST_CACHE_SECONDARY_TIME": "60d",
		}, map[string]time.Duration{
			"docker.io/library/nginx:stable":             10 * time.Minute,
			"docker.io/library/nginx:stable-alpine":      10 * time.Minute,
			"docker.io/library/nginx:1.27-stable":        60 * ttlDay, // digits and dots first: secondary
			"docker.io/library/nginx:mainline-stable":    none,        // stable, but not at the start of the tag
			"docker.io/library/nginx:1.27.0":             60 * ttlDay,
			"quay.io/prometheus/node-exporter:v1.8.2":    60 * ttlDay,
			"docker.io/library/nginx:latest":             none,
			"registry.test:5000/app:latest":              none, // the port's digits are not the tag's
			"registry.test:5000/team.1.2/app:latest":     none, // nor the repository's dots
			"docker.io/library/postgres:16":              none, // three digits or dots are needed
			"docker.io/library/postgres:16.4":            60 * ttlDay,
			"docker.io/library/busybox:production-build": 10 * time.Minute,
		}},
		{"primary regex alone: rpardini's 10m", map[string]string{"MANIFEST_CACHE_PRIMARY_REGEX": "canary"},
			map[string]time.Duration{"ghcr.io/org/app:canary-2": 10 * time.Minute, "ghcr.io/org/app:stable": none, "ghcr.io/org/app:1.2.3": none}},
		{"primary time alone: rpardini's regex", map[string]string{"MANIFEST_CACHE_PRIMARY_TIME": "0"},
			map[string]time.Duration{"ghcr.io/org/app:nightly": 0, "ghcr.io/org/app:1.2.3": none}},
		{"secondary time alone", map[string]string{"MANIFEST_CACHE_SECONDARY_TIME": "7d"},
			map[string]time.Duration{"ghcr.io/org/app:1.2.3": 7 * ttlDay, "ghcr.io/org/app:stable": none}},
		{"primary before secondary", map[string]string{"MANIFEST_CACHE_PRIMARY_REGEX": `v1\.`, "MANIFEST_CACHE_SECONDARY_REGEX": `v`},
			map[string]time.Duration{"ghcr.io/org/app:v1.2.3": 10 * time.Minute, "ghcr.io/org/app:v2.0.0": 60 * ttlDay}},
	} {
		rules, err := rpardiniRules(func(k string) string { return tc.env[k] })
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		for name, want := range tc.want {
			ttl, ok := firstTTL(rules, name)
			if !ok {
				ttl = none
			}
			if ttl != want {
				t.Errorf("%s: %s gets %v; want %v (-1: no rule)", tc.name, name, ttl, want)
			}
		}
	}
}

func TestRpardiniRulesRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, value, want string }{
		{"MANIFEST_CACHE_PRIMARY_REGEX", `(?!latest)`, "MANIFEST_CACHE_PRIMARY_REGEX"},
		{"MANIFEST_CACHE_SECONDARY_REGEX", `(`, "MANIFEST_CACHE_SECONDARY_REGEX"},
		{"MANIFEST_CACHE_PRIMARY_TIME", `10 minutes`, "MANIFEST_CACHE_PRIMARY_TIME"},
		{"MANIFEST_CACHE_SECONDARY_TIME", `-1d`, "MANIFEST_CACHE_SECONDARY_TIME"},
	} {
		_, err := rpardiniRules(func(k string) string {
			if k == tc.name {
				return tc.value
			}
			return ""
		})
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s=%q: %v; want one line naming %s", tc.name, tc.value, err, tc.want)
		}
	}
}

func TestFormatTTLRule(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		`:latest$=0s`: `:latest$=0`, `:v=240h`: `:v=10d`, `x=90m`: `x=1h30m0s`, `x=1d`: `x=1d`, `a=b=36h`: `a=b=36h0m0s`,
	} {
		r, err := parseTTLRule(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := formatTTLRule(r); got != want {
			t.Errorf("formatTTLRule(%q) = %q; want %q", in, got, want)
		}
	}
}

// TestBadTTLRules: a bad rule, from the command line or the environment,
// is one line naming where it came from, and exit code 2. t.Setenv
// forbids t.Parallel.
func TestBadTTLRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  [2]string
		want string
	}{
		{"bad regex", []string{"--manifest-ttl-rule", "(=1h"}, [2]string{}, "manifest-ttl-rule"},
		{"bad duration", []string{"--manifest-ttl-rule", ":latest$=soon"}, [2]string{}, "manifest-ttl-rule"},
		{"no duration", []string{"--manifest-ttl-rule", ":latest$"}, [2]string{}, "manifest-ttl-rule"},
		{"second of two", []string{"--manifest-ttl-rule", ":latest$=0", "--manifest-ttl-rule", "v[1=2h"}, [2]string{}, "manifest-ttl-rule"},
		{"from REGPROXY_MANIFEST_TTL_RULE", nil, [2]string{ttlRuleEnv, ":latest$=0\n:v[=1d"}, ttlRuleEnv},
		{"rpardini regex", nil, [2]string{"MANIFEST_CACHE_PRIMARY_REGEX", "(?<=x)"}, "MANIFEST_CACHE_PRIMARY_REGEX"},
		{"rpardini time", nil, [2]string{"MANIFEST_CACHE_SECONDARY_TIME", "2 months"}, "MANIFEST_CACHE_SECONDARY_TIME"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env[0] != "" {
				t.Setenv(tc.env[0], tc.env[1])
			}
			code, stdout, stderr := runCLI(t, serveArgs(t, tc.args...)...)
			wantUsageError(t, tc.want, code, stdout, stderr)
		})
	}
}

// servingRules returns the manifest_ttl_rules of the daemon's start-up
// line.
func servingRules(t *testing.T, d *daemon) []string {
	t.Helper()
	for line := range strings.Lines(d.log.String()) {
		var e struct {
			Msg   string   `json:"msg"`
			Rules []string `json:"manifest_ttl_rules"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.Msg == "regproxy serving" {
			return e.Rules
		}
	}
	t.Fatal(`no "regproxy serving" line`)
	return nil
}

// TestTTLRuleServe runs regproxy with a rule of TTL zero for the index's
// tag: each GET of it after the first costs one HEAD upstream and no GET.
// The rules of the command line replace those of REGPROXY_MANIFEST_TTL_RULE,
// and rpardini's tiers follow them; the start-up line lists them in order.
func TestTTLRuleServe(t *testing.T) {
	t.Parallel()
	s := newHubSetupWith(t, func(t *testing.T, up *testupstream.Upstream) hubDaemonConfig {
		return hubDaemonConfig{
			Flags: []string{"--manifest-ttl-rule", `/public/multi:v1$=0`, "--manifest-ttl-rule", `:v[0-9]{1,3}$=30d`},
			Env:   []string{ttlRuleEnv + "=ignored=1h", "MANIFEST_CACHE_SECONDARY_TIME=7d"},
		}
	})
	want := []string{`/public/multi:v1$=0`, `:v[0-9]{1,3}$=30d`, rpardiniTagStart + `(?:` + rpardiniTiers[1].regex + `)=7d`}
	if got := servingRules(t, s.d); !slices.Equal(got, want) {
		t.Errorf("manifest_ttl_rules = %q; want %q", got, want)
	}
	c := craneManifestClient(t, s, craneTransport(t, s))
	accept := string(types.OCIImageIndex)
	// The first GET may cost HEADs too: regproxy learns whether the
	// repository is open to clients without a token.
	for i, cost := range [][2]int64{{1, -1}, {0, 1}, {0, 1}} {
		getBefore, headBefore := s.up.Count("GET manifest"), s.up.Count("HEAD manifest")
		if got := getManifest(t, c, s, accept); got.Digest != s.Index.Digest {
			t.Fatalf("GET %d: digest %s; want %s", i+1, got.Digest, s.Index.Digest)
		}
		if g, h := s.up.Count("GET manifest")-getBefore, s.up.Count("HEAD manifest")-headBefore; g != cost[0] || h != cost[1] && cost[1] >= 0 {
			t.Errorf("GET %d of a tag with TTL 0: %d manifest GETs and %d HEADs upstream; want %d and %d", i+1, g, h, cost[0], cost[1])
		}
	}
}

// TestTTLRulesFromEnv: without --manifest-ttl-rule, REGPROXY_MANIFEST_TTL_RULE
// holds the rules, one a line.
func TestTTLRulesFromEnv(t *testing.T) {
	t.Parallel()
	d := startDaemonEnv(t, []string{ttlRuleEnv + "=:latest$=0\n\n  ^quay\\.io/=2d  \n"})
	if got, want := servingRules(t, d), []string{`:latest$=0`, `^quay\.io/=2d`}; !slices.Equal(got, want) {
		t.Errorf("manifest_ttl_rules = %q; want %q", got, want)
	}
}

// TestReadmeTTLRules: the rules the README shows parse, and select what
// it says they select.
func TestReadmeTTLRules(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var rules []proxy.TTLRule
	for _, m := range regexp.MustCompile(`--manifest-ttl-rule '([^']+)'`).FindAllStringSubmatch(string(b), -1) {
		r, err := parseTTLRule(m[1])
		if err != nil {
			t.Errorf("README rule: %v", err)
		}
		rules = append(rules, r)
	}
	if len(rules) != 3 {
		t.Fatalf("%d rules in the README's example; want 3", len(rules))
	}
	for name, want := range map[string]time.Duration{
		"docker.io/library/alpine:latest":         0,
		"docker.io/library/nginx:1.27.0":          7 * ttlDay,
		"quay.io/prometheus/node-exporter:v1.8.2": 2 * ttlDay,
		"registry.corp:5000/team/app:1.2.3-rc.1":  2 * ttlDay,
	} {
		if got, ok := firstTTL(rules, name); !ok || got != want {
			t.Errorf("README rules give %s %v (matched %v); want %v", name, got, ok, want)
		}
	}
	if _, ok := firstTTL(rules, "docker.io/library/nginx:mainline"); ok {
		t.Error("README rules match nginx:mainline; want the default")
	}
}
