package proxy

import (
	"slices"
	"strings"
	"testing"

	"github.com/regproxy/regproxy/metrics"
)

// TestRegistryLabel: a registry label is an allow-list entry or "other",
// whatever host a client names.
func TestRegistryLabel(t *testing.T) {
	t.Parallel()
	a, err := parseAllowList([]string{"docker.io", "quay.io", "registry.test:5000"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ target, want string }{
		{"quay.io:443", "quay.io"},
		{"QUAY.io:443", "quay.io"},
		{"quay.io", "quay.io"}, // an upstream URL's host without a port
		{"registry-1.docker.io:443", "docker.io"},
		{"auth.docker.io:443", "docker.io"},
		{"production.cloudflare.docker.com", "docker.io"},
		{"registry.test:5000", "registry.test:5000"},
		{"registry.test:443", "other"}, // not the listed port
		{"github.com:443", "other"},
		{"evil.example:443", "other"},
		{"", "other"},
		{"127.0.0.1:3128", "other"},
	} {
		if got := a.label(tc.target); got != tc.want {
			t.Errorf("label(%q) = %q; want %q", tc.target, got, tc.want)
		}
	}
	// Docker Hub's hosts are "docker.io" only when the list says docker.io.
	b, _ := parseAllowList([]string{"registry-1.docker.io"})
	if got := b.label("registry-1.docker.io:443"); got != "registry-1.docker.io" {
		t.Errorf("label with registry-1.docker.io listed = %q; want registry-1.docker.io", got)
	}
}

func TestMetricKind(t *testing.T) {
	t.Parallel()
	digest := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct{ kind, ref, want string }{
		{logBlob, digest, "blob"},
		{logManifest, digest, "manifest"},
		{logManifest, "latest", "tag"},
		{logManifest, "", "manifest"}, // a name describePath refused
		{logTags, "", "other"},
		{logPing, "", "other"},
		{logUpload, "", "other"},
		{"", "", "other"}, // a tunnel, a page of the proxy port
	} {
		if got := metricKind(tc.kind, tc.ref); got != tc.want {
			t.Errorf("metricKind(%q, %q) = %q; want %q", tc.kind, tc.ref, got, tc.want)
		}
	}
}

// TestMetricOutcome: every access-log outcome has its own metric outcome,
// one of metrics.Outcomes; an aborted response is an error.
func TestMetricOutcome(t *testing.T) {
	t.Parallel()
	all := []string{outcomeHit, outcomeMiss, outcomeJoin, outcomeStale, outcomeRevalidated, outcomePass,
		outcomeOffline, outcomeError, outcomeLocal, outcomeTunnel, outcomeDenied}
	seen := map[string]bool{}
	for _, o := range all {
		got := metricOutcome(o)
		if !slices.Contains(metrics.Outcomes, got) || seen[got] {
			t.Errorf("metricOutcome(%q) = %q: not in metrics.Outcomes, or shared", o, got)
		}
		seen[got] = true
	}
	if len(seen) != len(metrics.Outcomes) {
		t.Errorf("%d outcomes map to %d metric outcomes; metrics.Outcomes has %d", len(all), len(seen), len(metrics.Outcomes))
	}
	for _, o := range []string{outcomeHit + abortedSuffix, outcomeJoin + abortedSuffix} {
		if got := metricOutcome(o); got != "error" {
			t.Errorf("metricOutcome(%q) = %q; want error", o, got)
		}
	}
}
