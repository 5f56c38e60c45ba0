package main

import (
	"encoding/json"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/evict/evicttest"
)

// TestCacheLs lists the image cache, whole, filtered and sorted, for
// people and as JSON. The golden files show each tag's digest, size and
// expiry (its record's, else validated + --manifest-ttl), and each blob's
// repositories.
func TestCacheLs(t *testing.T) {
	fixedNow(t)
	dataDir, _ := imageCacheDir(t)
	for _, tt := range []struct {
		golden string
		args   []string
	}{
		{"ls.txt", nil},
		{"ls.json", []string{"--json"}},
		{"ls-sort-size.txt", []string{"--sort", "size"}},
		{"ls-sort-used.txt", []string{"--sort", "used"}},
		{"ls-repo.txt", []string{"--repo", "app"}},
		{"ls-registry-hub.txt", []string{"--registry", "docker.io", "--repo", "alpine"}},
		{"ls-registry-glob.txt", []string{"--registry", "registry.*"}},
		{"ls-manifest-ttl.txt", []string{"--manifest-ttl", "3d"}},
		{"ls-nothing.txt", []string{"--repo", "nowhere"}},
	} {
		t.Run(tt.golden, func(t *testing.T) {
			runGolden(t, tt.golden, append([]string{"cache", "ls", "--data-dir", dataDir}, tt.args...)...)
		})
	}
}

// lsJSON runs cache ls --json with args and decodes it.
func lsJSON(t *testing.T, args ...string) lsOutput {
	t.Helper()
	code, stdout, stderr := runCLI(t, append([]string{"cache", "ls", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("cache ls: exit %d, stderr %q", code, stderr)
	}
	var out lsOutput
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("cache ls --json: %v\n%s", err, stdout)
	}
	return out
}

// TestCacheLsFiltersAndSorts checks what the goldens show, by name: which
// tags and blobs each filter keeps, and the orders of --sort.
func TestCacheLsFiltersAndSorts(t *testing.T) {
	fixedNow(t)
	dataDir, c := imageCacheDir(t)
	tagNames := func(out lsOutput) []string {
		var names []string
		for _, tg := range out.Tags {
			names = append(names, tg.Name)
		}
		return names
	}
	blobs := func(out lsOutput) []digest.Digest {
		var ds []digest.Digest
		for _, b := range out.Blobs {
			ds = append(ds, b.Digest)
		}
		return ds
	}
	for _, tt := range []struct {
		name      string
		args      []string
		wantTags  []string
		wantBlobs []digest.Digest
	}{
		{"all by name", nil,
			[]string{"docker.io/library/alpine:3.20", "r.test/app:v1", "r.test/app:v2", "registry.test:5000/team/tool:latest"},
			// By repository, then digest; blobs of no repository last.
			slices.Concat(sortedDigests(c.C3, c.L4), sortedDigests(c.C1, c.L1, c.L2, c.C2, c.L3), sortedDigests(c.L5, c.Unreferenced))},
		{"by size", []string{"--sort", "size"},
			[]string{"r.test/app:v1", "docker.io/library/alpine:3.20", "r.test/app:v2", "registry.test:5000/team/tool:latest"},
			[]digest.Digest{c.L4, c.L1, c.L2, c.L3, c.L5, c.Unreferenced, c.C2, c.C3, c.C1}},
		{"least recently used first", []string{"--sort", "used"},
			// tool has nothing cached; v1 and v2 share a layer last used
			// at 30h, and go by name.
			[]string{"registry.test:5000/team/tool:latest", "r.test/app:v1", "r.test/app:v2", "docker.io/library/alpine:3.20"},
			slices.Concat(sortedDigests(c.C1, c.L1), []digest.Digest{c.L5, c.Unreferenced}, sortedDigests(c.C2, c.L2, c.L3), sortedDigests(c.C3, c.L4))},
		{"repository and what is under it", []string{"--repo", "app"},
			[]string{"r.test/app:v1", "r.test/app:v2"}, sortedDigests(c.C1, c.L1, c.L2, c.C2, c.L3)},
		{"glob of repository", []string{"--repo", "*/tool"}, []string{"registry.test:5000/team/tool:latest"}, nil},
		{"Docker Hub by its short names", []string{"--registry", "docker.io", "--repo", "alpine"},
			[]string{"docker.io/library/alpine:3.20"}, sortedDigests(c.C3, c.L4)},
		{"Docker Hub by its API host", []string{"--registry", "registry-1.docker.io", "--repo", "library/alpine"},
			[]string{"docker.io/library/alpine:3.20"}, sortedDigests(c.C3, c.L4)},
		{"registry with a port", []string{"--registry", "registry.test:5000"}, []string{"registry.test:5000/team/tool:latest"}, nil},
		{"no such repository", []string{"--repo", "ap"}, nil, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := lsJSON(t, append([]string{"--data-dir", dataDir}, tt.args...)...)
			if got := tagNames(out); !slices.Equal(got, tt.wantTags) {
				t.Errorf("tags %q, want %q", got, tt.wantTags)
			}
			if tt.wantBlobs != nil || tt.wantTags == nil {
				if got := blobs(out); !slices.Equal(got, tt.wantBlobs) {
					t.Errorf("blobs\n%q\nwant\n%q", got, tt.wantBlobs)
				}
			}
		})
	}

	out := lsJSON(t, "--data-dir", dataDir)
	for _, b := range out.Blobs {
		switch b.Digest {
		case c.L2:
			if !slices.Equal(b.Repositories, []string{"r.test/app"}) || b.Manifests != 2 {
				t.Errorf("shared layer: repositories %q, %d manifests; want r.test/app, 2", b.Repositories, b.Manifests)
			}
		case c.L5:
			if len(b.Repositories) != 0 || b.Manifests != 1 {
				t.Errorf("blob of an untagged manifest: repositories %q, %d manifests; want none, 1", b.Repositories, b.Manifests)
			}
		case c.Unreferenced:
			if len(b.Repositories) != 0 || b.Manifests != 0 {
				t.Errorf("unreferenced blob: repositories %q, %d manifests; want none, 0", b.Repositories, b.Manifests)
			}
		}
	}
	for _, tg := range out.Tags {
		if tg.Name == "r.test/app:v1" && (tg.Records != 2 || tg.Size != 200+2<<20+1<<20+manifestSize(t, dataDir, c.M1)) {
			t.Errorf("app:v1: %d records, %d bytes; want 2 records, and the bytes of its manifest, config and layers", tg.Records, tg.Size)
		}
	}
}

// manifestSize is the bytes of manifest d's entry in the disk cache.
func manifestSize(t *testing.T, dataDir string, d digest.Digest) int64 {
	t.Helper()
	disk, err := cachestore.OpenDisk(filepath.Join(dataDir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := disk.Stat(t.Context(), cachestore.ManifestKey(d))
	if err != nil {
		t.Fatal(err)
	}
	return e.Size
}

func sortedDigests(ds ...digest.Digest) []digest.Digest {
	slices.Sort(ds)
	return ds
}

// TestCacheLsUsageErrors: a bad --sort or glob is exit 2, one line.
func TestCacheLsUsageErrors(t *testing.T) {
	dataDir, _ := imageCacheDir(t)
	for _, tt := range []struct{ flag, value string }{
		{"sort", "age"},
		{"repo", "app["},
		{"registry", "[x"},
		{"manifest-ttl", "soon"},
	} {
		t.Run(tt.flag, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, "cache", "ls", "--data-dir", dataDir, "--"+tt.flag, tt.value)
			wantUsageError(t, tt.flag, code, stdout, stderr)
		})
	}
	code, _, stderr := runCLI(t, "cache", "ls", "--data-dir", dataDir, "extra")
	if code != 2 || strings.Count(stderr, "\n") != 1 {
		t.Errorf("cache ls with an argument: exit %d, %q; want 2 and one line", code, stderr)
	}
	code, _, stderr = runCLI(t, "cache", "ls", "--data-dir", t.TempDir())
	if code != 1 || !strings.Contains(stderr, "no cache in") {
		t.Errorf("cache ls of a data dir without a cache: exit %d, %q; want 1", code, stderr)
	}
}

// BenchmarkCacheLs100k lists a cache of 100k blobs: one walk, and no read
// of any blob.
func BenchmarkCacheLs100k(b *testing.B) {
	dataDir := b.TempDir()
	evicttest.Populate(b, filepath.Join(dataDir, "cache"), 100_000)
	for b.Loop() {
		if code := run([]string{"regproxy", "cache", "ls", "--json", "--data-dir", dataDir}, io.Discard, io.Discard); code != 0 {
			b.Fatalf("cache ls: exit %d", code)
		}
	}
}
