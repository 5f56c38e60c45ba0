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
