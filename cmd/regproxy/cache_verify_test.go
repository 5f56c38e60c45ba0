package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/vbauerster/mpb/v8"

	"github.com/regproxy/regproxy/cachestore"
)

// TestCacheVerifyClean: an intact cache verifies, exit 0.
func TestCacheVerifyClean(t *testing.T) {
	dataDir, _ := imageCacheDir(t)
	runGolden(t, "verify-clean.txt", "cache", "verify", "--data-dir", dataDir)
	runGolden(t, "verify-clean.json", "cache", "verify", "--data-dir", dataDir, "--json")
}

// TestCacheVerifyCorrupt flips a byte of a blob's file and of a typed
// manifest's body on disk: verify reports both, removes them, exits 1, and
// a second run finds the cache clean. --dry-run reports and keeps.
func TestCacheVerifyCorrupt(t *testing.T) {
	for _, tt := range []struct {
		name, golden string
		flags        []string
		removed      bool
	}{
		{"human", "verify-corrupt.txt", nil, true},
		{"json", "verify-corrupt.json", []string{"--json"}, true},
		{"dry run", "verify-dry-run.txt", []string{"--dry-run"}, false},
		{"one at a time", "verify-corrupt.txt", []string{"--parallel", "1"}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dataDir, c := imageCacheDir(t)
			bad := []string{cachestore.BlobKey(c.L2), cachestore.ManifestKey(c.M3)}
			for _, key := range bad {
				corrupt(t, dataDir, key)
			}
			code, stdout, stderr := runCLI(t, append([]string{"cache", "verify", "--data-dir", dataDir}, tt.flags...)...)
			if code != 1 || stderr != "regproxy: cache verify: 2 entries corrupt\n" {
				t.Fatalf("exit %d, stderr %q; want 1 and one line", code, stderr)
			}
			if tt.name == "json" {
				golden(t, tt.golden, stdout)
			} else {
				// Lines come as entries are found: in any order.
				golden(t, tt.golden, sortedLines(stdout))
			}
			for _, key := range allKeys(c) {
				want := !contains(bad, key) || !tt.removed
				if got := cached(t, dataDir, key); got != want {
					t.Errorf("%s: cached = %v, want %v", key, got, want)
				}
			}
			if tt.removed {
				if code, stdout, _ := runCLI(t, "cache", "verify", "--data-dir", dataDir); code != 0 {
					t.Errorf("second verify: exit %d:\n%s", code, stdout)
				}
			}
		})
	}
}

// sortedLines sorts the lines of s but its last, the summary.
func sortedLines(s string) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	slices.Sort(lines[:len(lines)-1])
	return strings.Join(lines, "\n") + "\n"
}

// recommitting is a disk store whose first DeleteIf of key is preceded by
// what a server would do beside verify: it evicts the corrupt entry and
// commits it again, intact.
type recommitting struct {
	*cachestore.Disk
	t    *testing.T
	key  string
	good []byte
	done bool
}

func (r *recommitting) DeleteIf(ctx context.Context, key string, cond func() bool) (bool, error) {
	if key == r.key && !r.done {
		r.done = true
		if _, err := r.Disk.DeleteIf(ctx, key, func() bool { return true }); err != nil {
			r.t.Fatal(err)
		}
		(&cacheFixture{t: r.t, store: r.Disk}).put(key, cachestore.Options{Kind: cachestore.Content}, r.good, time.Now().Add(time.Hour))
	}
	return r.Disk.DeleteIf(ctx, key, cond)
}

// TestVerifyKeepsARecommittedEntry: a corrupt blob that a server replaces
// with an intact one between verify's hash and its delete stays, intact.
func TestVerifyKeepsARecommittedEntry(t *testing.T) {
	dataDir, c := imageCacheDir(t)
	key := cachestore.BlobKey(c.L3)
	corrupt(t, dataDir, key)
	disk, err := cachestore.OpenDisk(filepath.Join(dataDir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := disk.Stat(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	store := &recommitting{Disk: disk, t: t, key: key, good: bytes.Repeat([]byte{'e'}, 512<<10)}
	if digest.FromBytes(store.good) != c.L3 {
		t.Fatal("the intact bytes do not match the blob's digest")
	}
	var read int64
	p, corrupted := verifyEntry(t.Context(), verifyItem{store: store, entry: e, d: c.L3}, false, func(n int64) { read += n })
	if p != nil || corrupted {
		t.Errorf("verifyEntry = %+v, %v; want nil: the entry it would remove was replaced by an intact one", p, corrupted)
	}
	if !store.done {
		t.Error("verify did not try to remove the corrupt entry")
	}
	if read != e.Size {
		t.Errorf("progress told of %d bytes, want the entry's %d once", read, e.Size)
	}
	r, err := disk.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("the entry committed again is gone: %v", err)
	}
	defer r.Close()
	if got, err := digest.FromReader(r); err != nil || got != c.L3 {
		t.Errorf("the entry left is %v, %v; want the intact %s", got, err, c.L3)
	}
}

// TestVerifyProgressBar drives the bar as verify does on a terminal: it
// shows entries, bytes, the rate and the time left, and problem lines
// above it.
func TestVerifyProgressBar(t *testing.T) {
	t.Parallel()
	var out syncBuffer
	v := &verifyProgress{total: 3, totalBytes: 3 << 20, stop: make(chan struct{}), stopped: make(chan struct{})}
	v.startBar(mpb.WithOutput(&out), mpb.ForceTTY(), mpb.WithAutoRefresh(), mpb.WithWidth(120), mpb.WithRefreshRate(time.Millisecond))
	v.out = v.p
	close(v.stopped)
	v.add(1 << 20)
	v.entryDone()
	time.Sleep(20 * time.Millisecond)
	v.println("corrupt: blob sha256:abc (1.0 MiB) hashes to sha256:def: removed")
	v.add(2 << 20)
	v.entryDone()
	v.entryDone()
	time.Sleep(20 * time.Millisecond)
	done := make(chan struct{})
	go func() { v.wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("wait did not return")
	}
	text := out.String()
	for _, want := range []string{"verify", "1/3 entries", "3/3 entries", "1.0 MiB / 3.0 MiB", "3.0 MiB / 3.0 MiB", "/s", "corrupt: blob sha256:abc"} {
		if !strings.Contains(text, want) {
			t.Errorf("bar output has no %q:\n%q", want, text)
		}
	}
}

// TestCacheVerifyTerminal runs verify on a terminal (script(1) gives it a
// pty): the bar, the corrupt entry's line above it and the summary after
// it; exit 1.
func TestCacheVerifyTerminal(t *testing.T) {
	t.Parallel()
	script, err := exec.LookPath("script")
	if err != nil {
		t.Fatalf("script(1), of util-linux, is needed: %v", err)
	}
	dataDir, c := imageCacheDir(t)
	corrupt(t, dataDir, cachestore.BlobKey(c.L1))
	verify := binary + " cache verify --data-dir " + dataDir
	cmd, cancel := timedCmd(t.Context(), time.Minute, script, "-q", "-e", "-c", "stty cols 120 rows 40; exec "+verify, "/dev/null")
	defer cancel()
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "TERM=xterm"}
	out, err := cmd.Output()
	killLeftovers(t, "script", cmd)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("verify on a terminal: %v, want exit status 1\n%q", err, out)
	}
	text := strings.ReplaceAll(string(out), "\r\n", "\n")
	for _, want := range []string{
		"verify  14/14 entries [", // the bar, complete
		"6.5 MiB / 6.5 MiB",
		"corrupt: blob " + c.L1.String(),
		"verified 14 entries (6.5 MiB): 1 corrupt, 1 removed",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("terminal output has no %q:\n%q", want, text)
		}
	}
	if strings.Index(text, "verified 14 entries") < strings.LastIndex(text, "entries [") ||
		strings.Index(text, "verified 14 entries") < strings.Index(text, "corrupt: blob") {
		t.Errorf("the summary comes before the bar or the corrupt entry's line:\n%q", text)
	}
}

// TestCacheVerifyLines: without a terminal, progress is plain lines on
// stderr (one each lineProgressEvery), results on stdout.
func TestCacheVerifyLines(t *testing.T) {
	t.Parallel()
	var stdout, stderr syncBuffer
	v := newVerifyProgress(&stdout, &stderr, 2, 2048, false)
	v.add(1024)
	v.entryDone()
	v.println("corrupt: something")
	v.wait()
	if stdout.String() != "corrupt: something\n" {
		t.Errorf("stdout %q", stdout.String())
	}
	var js syncBuffer
	v = newVerifyProgress(&js, &stderr, 1, 1, true)
	v.println("corrupt: something")
	v.wait()
	if js.String() != "" {
		t.Errorf("with --json, problem lines went to stdout: %q", js.String())
	}
}
