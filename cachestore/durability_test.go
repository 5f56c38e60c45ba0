package cachestore

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
)

// These tests replace Disk.fsync. They check what a commit syncs and in
// which order against the rename, and what a crash at each step of a
// commit leaves for the next NewDisk. They cannot show that the kernel and
// the disk keep what fsync promised: that takes a block device that drops
// unsynced writes (dm-log-writes, CrashMonkey), which the tests do not
// have.

// commitPaths are the ways an entry gets into a Disk: a store Writer
// (manifests, with their media type, and tag records) and ImportFile
// (fills, whose spool file is in the store's spool directory).
var commitPaths = []struct {
	name   string
	typed  bool // the entry has a media type, so it lives in its typed file
	commit func(t *testing.T, d *Disk, key string, data []byte) error
	// partial writes the first half of data the way commit would write
	// all of it, and stops there.
	partial func(t *testing.T, d *Disk, key string, data []byte)
}{
	{"Commit", false, writerCommit(Options{Kind: Record}), writerPartial(Options{Kind: Record})},
	{"Commit typed", true, writerCommit(testTyped), writerPartial(testTyped)},
	{"ImportFile", false, func(t *testing.T, d *Disk, key string, data []byte) error {
		f, err := os.CreateTemp(d.SpoolDir(), "fill-*")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return d.ImportFile(t.Context(), key, f.Name(), int64(len(data)), digest.FromBytes(data))
	}, func(t *testing.T, d *Disk, _ string, data []byte) {
		if err := os.WriteFile(filepath.Join(d.SpoolDir(), "fill-partial"), data[:len(data)/2], 0o644); err != nil {
			t.Fatal(err)
		}
	}},
}

var testTyped = Options{Kind: Content, MediaType: "application/vnd.oci.image.manifest.v1+json"}

// writerCommit commits data with a store Writer.
func writerCommit(opts Options) func(t *testing.T, d *Disk, key string, data []byte) error {
	return func(t *testing.T, d *Disk, key string, data []byte) error {
		w, err := d.Create(t.Context(), key, opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		return w.Commit(t.Context(), digest.FromBytes(data))
	}
}

// writerPartial writes half of data to a store Writer and stops.
func writerPartial(opts Options) func(t *testing.T, d *Disk, key string, data []byte) {
	return func(t *testing.T, d *Disk, key string, data []byte) {
		w, err := d.Create(t.Context(), key, opts)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data[:len(data)/2])
	}
}

// entryFile is the file of key's entry, typed or not.
func entryFile(t *testing.T, d *Disk, key string, typed bool) string {
	t.Helper()
	p, err := d.path(key)
	if err != nil {
		t.Fatal(err)
	}
	if typed {
		p += typedSuffix
	}
	return p
}

// syncEvent is one call of Disk.fsync.
type syncEvent struct {
	path    string // relative to the root
	dir     bool
	visible bool // whether the entry being committed existed at the time
}

// TestDiskCommitSyncs checks that a commit syncs the entry's file before
// the rename makes it visible, then, after the rename, the directory that
// holds it and each parent up to the root, for a blob, a tag record and a
// manifest's record in directories that exist already or not yet.
func TestDiskCommitSyncs(t *testing.T) {
	t.Parallel()
	data := []byte("durable")
	dg := digest.FromBytes(data)
	keys := []struct{ name, key string }{
		{"blob", BlobKey(dg)},
		{"tag record", TagKey(strings.Repeat("ab", 32))},
		{"manifest record", ManifestMetaKey(dg)},
	}
	for _, cp := range commitPaths {
		for _, k := range keys {
			key := k.key
			for _, round := range []string{"new directories", "existing directories"} {
				t.Run(cp.name+"/"+k.name+"/"+round, func(t *testing.T) {
					t.Parallel()
					d := newTestDisk(t)
					if round == "existing directories" {
						// A sibling in the same fan-out directory.
						if err := cp.commit(t, d, key+"0", []byte("sibling")); err != nil {
							t.Fatal(err)
						}
					}
					events := recordSyncs(t, d, entryFile(t, d, key, cp.typed))
					if err := cp.commit(t, d, key, data); err != nil {
						t.Fatal(err)
					}
					if got, want := *events, wantSyncs(d, key); !slices.Equal(got, want) {
						t.Errorf("syncs:\n got  %+v\n want %+v", got, want)
					}
				})
			}
		}
	}
}

func newTestDisk(t *testing.T) *Disk {
	t.Helper()
	d, err := NewDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// recordSyncs makes d record its syncs, with whether the entry's file,
// final, existed at each, and still sync.
func recordSyncs(t *testing.T, d *Disk, final string) *[]syncEvent {
	t.Helper()
	var events []syncEvent
	d.fsync = func(f *os.File) error {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(d.root, f.Name())
		if !fi.IsDir() && strings.HasPrefix(rel, spoolName+string(filepath.Separator)) {
			rel = "spool file" // its name is random
		}
		_, err = os.Stat(final)
		events = append(events, syncEvent{path: rel, dir: fi.IsDir(), visible: err == nil})
		return f.Sync()
	}
	return &events
}

// wantSyncs is the order install documents: the spool file while the
// entry is not visible yet, then, once it is, every directory from the
// entry's up to the root.
func wantSyncs(d *Disk, key string) []syncEvent {
	want := []syncEvent{{path: "spool file", visible: false}}
	dirs, _ := layout(key)
	for i := len(dirs); i >= 0; i-- {
		rel := filepath.Join(dirs[:i]...)
		if rel == "" {
			rel = "."
		}
		want = append(want, syncEvent{path: rel, dir: true, visible: true})
	}
	return want
}

// crashPoints are the steps at which a process can die during a commit,
// from the bytes half written to after the last sync.
var crashPoints = []struct {
	name string
	// at is called before each fsync, with n the directories synced so
	// far; die ends the committing goroutine there, after the sync if
	// synced. A nil at dies halfway through writing the bytes.
	at func(dir bool, n int) (die, synced bool)
	// lost undoes the rename after the crash, as a power cut may before
	// the directory sync.
	lost    bool
	visible bool // whether the entry must exist after the crash
}{
	{name: "while writing"},
	{name: "before the file sync", at: func(dir bool, _ int) (bool, bool) { return !dir, false }},
	{name: "after the file sync, before the rename", at: func(dir bool, _ int) (bool, bool) { return !dir, true }},
	{name: "after the rename, before the directory sync", at: func(dir bool, n int) (bool, bool) { return dir && n == 0, false },
		visible: true},
	{name: "after the rename, which a power cut lost", at: func(dir bool, n int) (bool, bool) { return dir && n == 0, false },
		lost: true},
	{name: "after the directory sync, before the parents'", at: func(dir bool, n int) (bool, bool) { return dir && n == 1, false },
		visible: true},
	{name: "after the commit", at: func(bool, int) (bool, bool) { return false, false }, visible: true},
}

// TestDiskCrashDuringCommit stops a commit at each step as a crash would:
// the committing goroutine exits on the spot and the Disk is dropped
// without any clean-up. Then it opens the root again, as the next process
// does: the entry must be absent or whole (present once the rename is on
// disk), never partial, and the spool directory empty.
func TestDiskCrashDuringCommit(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	key := BlobKey(digest.FromBytes(data))
	for _, cp := range commitPaths {
		for _, pt := range crashPoints {
			t.Run(cp.name+"/"+pt.name, func(t *testing.T) {
				t.Parallel()
				root := t.TempDir()
				d, err := NewDisk(root)
				if err != nil {
					t.Fatal(err)
				}
				if pt.at == nil {
					cp.partial(t, d, key, data)
				} else if crashed := crashCommit(t, d, key, data, cp.commit, pt.at); crashed == (pt.name == "after the commit") {
					t.Fatalf("the commit crashed: %v; the test did not reach its step", crashed)
				}
				if pt.lost {
					unrename(t, d, entryFile(t, d, key, cp.typed))
				}
				checkAfterCrash(t, root, key, data, pt.visible)
			})
		}
	}
}

// crashCommit runs commit in a goroutine that dies (runtime.Goexit) where
// at says. It reports whether the goroutine died.
func crashCommit(t *testing.T, d *Disk, key string, data []byte,
	commit func(*testing.T, *Disk, string, []byte) error, at func(dir bool, n int) (die, synced bool)) (crashed bool) {
	t.Helper()
	dirs := 0
	d.fsync = func(f *os.File) error {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		die, synced := at(fi.IsDir(), dirs)
		if synced {
			if err := f.Sync(); err != nil {
				return err
			}
		}
		if die {
			runtime.Goexit()
		}
		if fi.IsDir() {
			dirs++
		}
		return f.Sync()
	}
	finished := false
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := commit(t, d, key, data); err != nil {
			t.Error(err)
		}
		finished = true
	})
	wg.Wait()
	return !finished
}

// unrename moves the entry's file p back to the spool, where it was before
// the rename that a power cut lost.
func unrename(t *testing.T, d *Disk, p string) {
	t.Helper()
	if err := os.Rename(p, filepath.Join(d.spool, "create-lost")); err != nil {
		t.Fatal(err)
	}
}

// checkAfterCrash opens root as the next process would: key's entry must
// be whole if visible, absent otherwise, and the spool empty.
func checkAfterCrash(t *testing.T, root, key string, data []byte, visible bool) {
	t.Helper()
	d, err := NewDisk(root)
	if err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(d.spool); len(left) != 0 {
		t.Errorf("spool after NewDisk holds %d files, want none", len(left))
	}
	r, err := d.Open(t.Context(), key)
	switch {
	case errors.Is(err, ErrNotFound):
		if visible {
			t.Error("the entry is gone after a crash that came after its rename")
		}
		return
	case err != nil:
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("entry after the crash: %d bytes, %v; want all %d", len(got), err, len(data))
	}
	if !visible {
		t.Error("the entry is visible after a crash before its rename reached the disk")
	}
}
