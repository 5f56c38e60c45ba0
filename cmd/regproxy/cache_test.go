package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/cache")

// cacheEntry is an entry of a test cache: its key, bytes and last use.
type cacheEntry struct {
	key  string
	data []byte
	used time.Time
}

var day = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testCache is a cache of two blobs, a manifest with its .meta record, and
// a tag record naming it, used on three days.
func testCache(t *testing.T) (dataDir string, entries []cacheEntry) {
	t.Helper()
	dataDir = t.TempDir()
	old := bytes.Repeat([]byte("o"), 3<<20)
	recent := bytes.Repeat([]byte("r"), 1500)
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`)
	md := digest.FromBytes(manifest)
	tag, _ := json.Marshal(map[string]any{"registry": "r.test", "repository": "app", "tag": "v1", "digest": md, "validated": day.Add(48 * time.Hour)})
	entries = []cacheEntry{
		{cachestore.BlobKey(digest.FromBytes(old)), old, day},
		{cachestore.BlobKey(digest.FromBytes(recent)), recent, day.Add(48 * time.Hour)},
		{cachestore.ManifestKey(md), manifest, day.Add(24 * time.Hour)},
		{cachestore.ManifestMetaKey(md), []byte(`{"contentType":"application/vnd.oci.image.manifest.v1+json"}`), day.Add(24 * time.Hour)},
		{cachestore.TagKey("0123456789abcdef"), tag, day.Add(48 * time.Hour)},
	}
	d, err := cachestore.NewDisk(filepath.Join(dataDir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, e := range entries {
		// The manifest is in the layout of releases before the store kept
		// media types: a body and a .meta record, which the cache still
		// counts as one manifest's.
		opts := cachestore.Options{Kind: cachestore.Content}
		if strings.HasPrefix(e.key, "tags/") || strings.HasSuffix(e.key, ".meta") {
			opts.Kind = cachestore.Record
		}
		w, err := d.Create(ctx, e.key, opts)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(e.data)
		if err := w.Commit(ctx, digest.FromBytes(e.data)); err != nil {
			t.Fatal(err)
		}
		if err := d.Touch(ctx, e.key, e.used); err != nil {
			t.Fatal(err)
		}
	}
	return dataDir, entries
}

// fixedFreeSpace makes cache stats report 80 GiB free of 500 GiB.
func fixedFreeSpace(t *testing.T) {
	saved := cacheFreeSpace
	cacheFreeSpace = func(*cachestore.Disk) (int64, int64, error) { return 80 << 30, 500 << 30, nil }
	t.Cleanup(func() { cacheFreeSpace = saved })
}

// golden compares got with testdata/cache/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "cache", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s:\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestCacheStats(t *testing.T) {
	fixedFreeSpace(t)
	dataDir, _ := testCache(t)
	runGolden(t, "stats.txt", "cache", "stats", "--data-dir", dataDir)
	runGolden(t, "stats.json", "cache", "stats", "--data-dir", dataDir, "--json")
}

// runGolden runs the CLI with args, wants exit 0 and nothing on stderr,
// and compares its output with the golden file name.
func runGolden(t *testing.T, name string, args ...string) {
	t.Helper()
	code, stdout, stderr := runCLI(t, args...)
	if code != 0 || stderr != "" {
		t.Fatalf("%v: exit %d, stderr %q", args, code, stderr)
	}
	golden(t, name, stdout)
}

// gcNow fixes the cache commands' clock a month after day.
func gcNow(t *testing.T) {
	saved := cacheNow
	cacheNow = func() time.Time { return day.Add(30 * 24 * time.Hour) }
	t.Cleanup(func() { cacheNow = saved })
}

func TestCacheGC(t *testing.T) {
	gcNow(t)
	for _, tt := range []struct {
		name   string
		args   []string
		golden string
		kept   []int // of testCache's entries
	}{
		// The old blob goes first; 2 MiB then fits the rest.
		{"max-size", []string{"--max-size", "2MiB"}, "gc-max-size.txt", []int{1, 2, 3, 4}},
		// Down to nothing but a live tag record and the manifest it keeps
		// (which gc says on stderr).
		{"max-size-json", []string{"--max-size", "0", "--manifest-ttl", "3650d", "--json"}, "gc-max-size.json", []int{2, 3, 4}},
		// A tag record past its TTL goes too, and then its manifest.
		{"max-size-expired", []string{"--max-size", "0"}, "gc-max-size-expired.txt", nil},
		// Unused for a day: all of it was last used in March.
		{"older-than", []string{"--older-than", "1d"}, "gc-older-than.txt", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dataDir, entries := testCache(t)
			code, stdout, stderr := runCLI(t, append([]string{"cache", "gc", "--data-dir", dataDir}, tt.args...)...)
			stuck := tt.kept != nil && !strings.Contains(strings.Join(tt.args, " "), "2MiB")
			if code != 0 || (stderr != "") != stuck || (stuck && !strings.Contains(stderr, "nothing left to evict")) {
				t.Fatalf("exit %d, stderr %q", code, stderr)
			}
			golden(t, tt.golden, stdout)
			d, err := cachestore.OpenDisk(filepath.Join(dataDir, "cache"))
			if err != nil {
				t.Fatal(err)
			}
			for i, e := range entries {
				_, err := d.Stat(context.Background(), e.key)
				if kept := contains(tt.kept, i); (err == nil) != kept {
					t.Errorf("entry %d (%s): cached = %v, want %v", i, e.key, err == nil, kept)
				}
			}
		})
	}
}

func contains[T comparable](s []T, v T) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestCacheUsageErrors(t *testing.T) {
	dataDir, _ := testCache(t)
	for _, tt := range []struct {
		flag string
		args []string
	}{
		{"max-size", []string{"cache", "gc", "--data-dir", dataDir, "--max-size", "lots"}},
		{"older-than", []string{"cache", "gc", "--data-dir", dataDir, "--older-than", "soon"}},
		{"azure-container", []string{"cache", "stats", "--data-dir", dataDir, "--azure-container", "c"}},
		{"storage", []string{"cache", "ls", "--data-dir", dataDir, "--storage", "s3"}},
		{"--storage azure", []string{"cache", "verify", "--data-dir", dataDir, "--storage", "azure"}},
		{"parallel", []string{"cache", "verify", "--data-dir", dataDir, "--parallel", "0"}},
		{"disk-cache-size", []string{"cache", "rm", "--data-dir", dataDir, "--storage", "azure", "--disk-cache-size", "x", "alpine"}},
		{"cache-max-size", serveArgs(t, "--cache-max-size", "12X")},
		{"min-free-space", serveArgs(t, "--min-free-space", "120%")},
	} {
		t.Run(tt.flag, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			wantUsageError(t, tt.flag, code, stdout, stderr)
		})
	}
	code, _, stderr := runCLI(t, "cache", "gc", "--data-dir", dataDir)
	if code != 2 || !strings.Contains(stderr, "--max-size") {
		t.Errorf("cache gc without a bound: exit %d, %q; want 2 and a line naming the flags", code, stderr)
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want int64
	}{
		{"4096", 4096}, {"32GiB", 32 << 30}, {"32g", 32 << 30}, {"500G", 500 << 30},
		{"800MB", 800e6}, {"1.5T", 3 << 39}, {"2 KiB", 2048}, {"0", 0},
	} {
		if got, err := parseSize(tt.in); err != nil || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "G", "-1G", "12X", "1e3", "NaN", "99999999999T"} {
		if got, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", bad, got)
		}
	}
	if b, p, err := parseMinFree("5%"); b != 0 || p != 5 || err != nil {
		t.Errorf("parseMinFree(5%%) = %d, %v, %v", b, p, err)
	}
	if b, p, err := parseMinFree("10G"); b != 10<<30 || p != 0 || err != nil {
		t.Errorf("parseMinFree(10G) = %d, %v, %v", b, p, err)
	}
}
