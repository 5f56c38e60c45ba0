package proxy

import (
	"context"
	"log/slog"
	"regexp"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// TestTagNames: the names TTL rules match, from the (registry, repository)
// that canonicalRepo makes of what a client asked for.
func TestTagNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		target, name, tag string
		want, alias       string
	}{
		{"registry-1.docker.io:443", "library/alpine", "latest", "docker.io/library/alpine:latest", "registry-1.docker.io/library/alpine:latest"},
		{"index.docker.io:443", "alpine", "3.20", "docker.io/library/alpine:3.20", "registry-1.docker.io/library/alpine:3.20"},
		{"docker.io:443", "bitnami/redis", "7.2", "docker.io/bitnami/redis:7.2", "registry-1.docker.io/bitnami/redis:7.2"},
		{"Registry-1.Docker.IO:443", "grafana/grafana", "main", "docker.io/grafana/grafana:main", "registry-1.docker.io/grafana/grafana:main"},
		{"quay.io:443", "prometheus/node-exporter", "v1.8.2", "quay.io/prometheus/node-exporter:v1.8.2", ""},
		{"registry.test:5000", "team/app", "v1", "registry.test:5000/team/app:v1", ""},
		{"127.0.0.1:5000", "app", "latest", "127.0.0.1:5000/app:latest", ""},
		{"[::1]:5000", "app", "latest", "[::1]:5000/app:latest", ""},
		{"[::1]:443", "app", "latest", "[::1]/app:latest", ""},
	} {
		registry, repo := canonicalRepo(tc.target, tc.name)
		name, alias := TagNames(registry, repo, tc.tag)
		if name != tc.want || alias != tc.alias {
			t.Errorf("TagNames of %s/%s:%s = %q, %q; want %q, %q", tc.target, tc.name, tc.tag, name, alias, tc.want, tc.alias)
		}
		if got := TagName(registry, repo, tc.tag); got != tc.want {
			t.Errorf("TagName of %s/%s:%s = %q; want %q", tc.target, tc.name, tc.tag, got, tc.want)
		}
	}
}

// TestTagTTL: the first rule that matches either name of a tag decides;
// the default applies to the rest.
func TestTagTTL(t *testing.T) {
	t.Parallel()
	rule := func(re string, ttl time.Duration) TTLRule { return TTLRule{Pattern: regexp.MustCompile(re), TTL: ttl} }
	p := &Proxy{manifestTTL: time.Hour, ttlRules: []TTLRule{
		rule(`^docker\.io/library/alpine:latest$`, 0),
		rule(`^registry-1\.docker\.io/library/`, 2*time.Hour),
		rule(`^quay\.io/.*:v[0-9]`, 10*24*time.Hour),
		rule(`:latest$`, time.Minute),
		rule(`^index\.docker\.io/`, 5*time.Hour), // no tag has that name
	}}
	for _, tc := range []struct {
		target, name, tag string
		want              time.Duration
	}{
		{"index.docker.io:443", "alpine", "latest", 0},
		{"registry-1.docker.io:443", "library/alpine", "latest", 0},
		{"docker.io:443", "library/alpine", "3.20", 2 * time.Hour},
		{"registry-1.docker.io:443", "library/nginx", "latest", 2 * time.Hour},
		{"registry-1.docker.io:443", "bitnami/redis", "latest", time.Minute},
		{"index.docker.io:443", "bitnami/redis", "7.2", time.Hour},
		{"quay.io:443", "prometheus/node-exporter", "v1.8.2", 10 * 24 * time.Hour},
		{"quay.io:443", "prometheus/node-exporter", "latest", time.Minute},
		{"quay.io:8443", "prometheus/node-exporter", "v1.8.2", time.Hour},
		{"ghcr.io:443", "org/app", "sha-abc", time.Hour},
	} {
		registry, repo := canonicalRepo(tc.target, tc.name)
		if got := p.tagTTL(registry, repo, tc.tag); got != tc.want {
			t.Errorf("TTL of %s/%s:%s = %v; want %v", tc.target, tc.name, tc.tag, got, tc.want)
		}
	}
	if got := (&Proxy{manifestTTL: 3 * time.Hour}).tagTTL("quay.io:443", "a/b", "c"); got != 3*time.Hour {
		t.Errorf("without rules: %v; want the default", got)
	}
}

// TestTagRecordExpires: a tag record says when it expires under the rules
// in force, so that `cache ls` can show it: Validated for a TTL of zero.
func TestTagRecordExpires(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	p := &Proxy{manifestTTL: time.Hour, now: clock, log: slog.New(slog.DiscardHandler), access: newAccess(clock),
		manifests: newManifestCache(cachestore.NewMemory()),
		ttlRules:  []TTLRule{{Pattern: regexp.MustCompile(`:latest$`)}, {Pattern: regexp.MustCompile(`:v`), TTL: 48 * time.Hour}}}
	m := &cachedManifest{Body: []byte("{}"), ContentType: "application/vnd.oci.image.manifest.v1+json", Digest: digest.FromString("{}")}
	ctx := context.Background()
	validated := now.Add(-time.Minute)
	for tag, want := range map[string]time.Time{"latest": validated, "v1": validated.Add(48 * time.Hour), "main": validated.Add(time.Hour)} {
		q := tagQuery{registry: "registry.test:443", repo: "r", tag: tag}
		p.saveTagRecord(ctx, q, m, validated)
		p.manifests.tags.Purge() // read it back from the store
		rec, err := p.manifests.readTag(ctx, q.key())
		if err != nil {
			t.Fatal(err)
		}
		if !rec.Expires.Equal(want) || !rec.Validated.Equal(validated) {
			t.Errorf("r:%s: validated %v, expires %v; want %v, %v", tag, rec.Validated, rec.Expires, validated, want)
		}
	}
}

// BenchmarkTagTTL is the cost a tag hit pays for rules: the names built
// and matched, against ten rules none of which matches.
func BenchmarkTagTTL(b *testing.B) {
	var rules []TTLRule
	for _, re := range []string{`:latest$`, `^docker\.io/library/`, `:v?[0-9]+\.[0-9]+\.[0-9]+$`, `^ghcr\.io/`, `:nightly`,
		`^quay\.io/prometheus/`, `-rc[0-9]*$`, `^nvcr\.io/`, `:sha-`, `^registry\.k8s\.io/`} {
		rules = append(rules, TTLRule{Pattern: regexp.MustCompile(re), TTL: time.Minute})
	}
	p := &Proxy{manifestTTL: time.Hour, ttlRules: rules}
	b.ReportAllocs()
	for b.Loop() {
		if p.tagTTL("registry-1.docker.io:443", "bitnami/redis", "7.2") != time.Hour {
			b.Fatal("a rule matched")
		}
	}
}
