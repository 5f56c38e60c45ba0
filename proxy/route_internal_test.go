package proxy

import (
	"net/http"
	"strings"
	"testing"
)

func BenchmarkParsePath(b *testing.B) {
	paths := []string{
		"/v2/library/alpine/blobs/sha256:" + strings.Repeat("ab", 32),
		"/v2/nvidia/cuda/manifests/12.4.1-cudnn-devel-ubuntu22.04",
		"/v2/team/project/app/manifests/sha256:" + strings.Repeat("cd", 32),
	}
	reqs := make([]*http.Request, len(paths))
	for i, p := range paths {
		reqs[i], _ = http.NewRequest("GET", "https://registry.test"+p, nil)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := parsePath(reqs[i%len(reqs)]); err != nil {
			b.Fatal(err)
		}
	}
}

func TestCanonicalRepo(t *testing.T) {
	cases := []struct{ target, name, registry, repo string }{
		{"registry-1.docker.io:443", "library/alpine", "registry-1.docker.io:443", "library/alpine"},
		{"index.docker.io:443", "alpine", "registry-1.docker.io:443", "library/alpine"},
		{"docker.io:443", "nvidia/cuda", "registry-1.docker.io:443", "nvidia/cuda"},
		{"Quay.io:443", "alpine", "quay.io:443", "alpine"},
		{"registry.local:5000", "team/app", "registry.local:5000", "team/app"},
	}
	for _, tc := range cases {
		registry, repo := canonicalRepo(tc.target, tc.name)
		if registry != tc.registry || repo != tc.repo {
			t.Errorf("canonicalRepo(%q, %q) = %q, %q; want %q, %q", tc.target, tc.name, registry, repo, tc.registry, tc.repo)
		}
	}
}
