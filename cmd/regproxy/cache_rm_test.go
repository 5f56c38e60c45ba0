package main

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// TestCacheRm removes by digest, tag and repository, and checks the store
// after: what was named is gone, and nothing else is.
func TestCacheRm(t *testing.T) {
	for _, tt := range []struct {
		name   string
		args   func(c imageCache) []string
		golden string
		gone   func(c imageCache) []string // keys
	}{
		{"blob", func(c imageCache) []string { return []string{c.L1.String()} }, "rm-blob.txt",
			func(c imageCache) []string { return []string{cachestore.BlobKey(c.L1)} }},
		{"manifest", func(c imageCache) []string { return []string{c.M1.String()} }, "rm-manifest.txt",
			func(c imageCache) []string { return []string{cachestore.ManifestKey(c.M1)} }},
		{"tag, every Accept variant", func(imageCache) []string { return []string{"r.test/app:v1"} }, "rm-tag.txt",
			func(c imageCache) []string { return []string{c.V1a, c.V1b} }},
		{"tag json", func(imageCache) []string { return []string{"--json", "r.test/app:v1"} }, "rm-tag.json",
			func(c imageCache) []string { return []string{c.V1a, c.V1b} }},
		{"repository", func(imageCache) []string { return []string{"r.test/app"} }, "rm-repo.txt",
			func(c imageCache) []string { return []string{c.V1a, c.V1b, c.V2} }},
		{"Docker Hub, as docker names it", func(imageCache) []string { return []string{"alpine:3.20"} }, "rm-hub.txt",
			func(c imageCache) []string { return []string{c.Alpine} }},
		{"Docker Hub, in full", func(imageCache) []string { return []string{"docker.io/library/alpine"} }, "",
			func(c imageCache) []string { return []string{c.Alpine} }},
		{"Docker Hub, by its API host", func(imageCache) []string { return []string{"registry-1.docker.io/library/alpine:3.20"} }, "",
			func(c imageCache) []string { return []string{c.Alpine} }},
		{"registry with a port, and a digest", func(c imageCache) []string {
			return []string{"registry.test:5000/team/tool:latest", c.Unreferenced.String()}
		}, "rm-several.txt", func(c imageCache) []string { return []string{c.Tool, cachestore.BlobKey(c.Unreferenced)} }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dataDir, c := imageCacheDir(t)
			before := allKeys(c)
			code, stdout, stderr := runCLI(t, append([]string{"cache", "rm", "--data-dir", dataDir}, tt.args(c)...)...)
			if code != 0 || stderr != "" {
				t.Fatalf("exit %d, stderr %q", code, stderr)
			}
			if tt.golden != "" {
				golden(t, tt.golden, stdout)
			}
			gone := tt.gone(c)
			for _, key := range before {
				want := !contains(gone, key)
				if got := cached(t, dataDir, key); got != want {
					t.Errorf("%s: cached = %v, want %v", key, got, want)
				}
			}
		})
	}
}

// allKeys are the keys of every entry of the image cache.
func allKeys(c imageCache) []string {
	keys := []string{c.V1a, c.V1b, c.V2, c.Alpine, c.Tool}
	for _, d := range []digest.Digest{c.C1, c.L1, c.L2, c.C2, c.L3, c.C3, c.L4, c.L5, c.Unreferenced} {
		keys = append(keys, cachestore.BlobKey(d))
	}
	for _, d := range []digest.Digest{c.M1, c.I2, c.M2, c.M3, c.M4} {
		keys = append(keys, cachestore.ManifestKey(d))
	}
	return keys
}

// TestCacheRmLegacyManifest removes a manifest that an older release
// stored as a body and a .meta record: both go.
func TestCacheRmLegacyManifest(t *testing.T) {
	dataDir, entries := testCache(t)
	md, _ := keyDigest(entries[2].key)
	code, stdout, stderr := runCLI(t, "cache", "rm", "--data-dir", dataDir, md.String())
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if !strings.HasPrefix(stdout, "removed manifest "+md.String()) {
		t.Errorf("stdout %q", stdout)
	}
	for _, e := range entries[2:4] {
		if cached(t, dataDir, e.key) {
			t.Errorf("%s is still cached", e.key)
		}
	}
}

// TestCacheRmBadInput: a name or digest not in the cache is one line and
// exit 1 (after removing the others named); a malformed one is exit 2,
// before anything is removed.
func TestCacheRmBadInput(t *testing.T) {
	dataDir, c := imageCacheDir(t)
	missing := digest.FromString("not cached").String()
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string // on the one line of stderr
	}{
		{"unknown digest", []string{missing}, 1, "not in the cache: " + missing},
		{"unknown tag", []string{"r.test/app:v9"}, 1, "not in the cache: r.test/app:v9"},
		{"unknown repository", []string{"quay.io/nobody/nothing"}, 1, "not in the cache: quay.io/nobody/nothing"},
		{"malformed digest", []string{"sha256:1234"}, 2, `"sha256:1234": not a digest`},
		{"malformed name", []string{"R.test/App:v1"}, 2, `"R.test/App:v1"`},
		{"name and digest", []string{"r.test/app@" + c.M1.String()}, 2, "give the manifest's digest alone"},
		{"no argument", nil, 2, "give what to remove"},
		{"malformed among good ones", []string{"r.test/app:v1", "bad tag"}, 2, `"bad tag"`},
		{"flag after the arguments", []string{"r.test/app:v1", "--json"}, 2, "flags go before the arguments"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append([]string{"cache", "rm", "--data-dir", dataDir}, tt.args...)...)
			if code != tt.code || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d, stderr %q; want %d and one line with %q", code, stderr, tt.code, tt.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want none", stdout)
			}
		})
	}
	if !cached(t, dataDir, c.V1a) {
		t.Error("a malformed argument beside r.test/app:v1 removed its records")
	}

	// A known digest beside an unknown one: the known one goes.
	code, stdout, stderr := runCLI(t, "cache", "rm", "--data-dir", dataDir, c.L3.String(), missing)
	if code != 1 || !strings.Contains(stdout, "removed blob "+c.L3.String()) || !strings.Contains(stderr, missing) {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if cached(t, dataDir, cachestore.BlobKey(c.L3)) {
		t.Errorf("blob %s is still cached", c.L3)
	}
}
