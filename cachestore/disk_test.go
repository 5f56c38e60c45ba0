package cachestore_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/storetest"
)

func TestDisk(t *testing.T) {
	t.Parallel()
	storetest.Run(t, diskStorage)
}

// diskStorage opens stores over a new root: NewDisk first, then OpenDisk,
// as regproxy cache beside serve does.
func diskStorage(t *testing.T) func() cachestore.Store {
	root := t.TempDir()
	var first *cachestore.Disk
	return func() cachestore.Store {
		if first == nil {
			first = newDisk(t, root)
			return first
		}
		d, err := cachestore.OpenDisk(root)
		if err != nil {
			t.Fatalf("OpenDisk(%q): %v", root, err)
		}
		return d
	}
}

func newDisk(t testing.TB, root string) *cachestore.Disk {
	t.Helper()
	d, err := cachestore.NewDisk(root)
	if err != nil {
		t.Fatalf("NewDisk(%q): %v", root, err)
	}
	return d
}

// Options of the entries the tests write.
var (
	content = cachestore.Options{Kind: cachestore.Content}
	record  = cachestore.Options{Kind: cachestore.Record}
)

// put commits data under key as a Record, which replaces what is there.
func put(t *testing.T, s cachestore.Store, key string, data []byte) error {
	t.Helper()
	return putOpts(t, s, key, record, data)
}

// putOpts commits data under key with opts.
func putOpts(t *testing.T, s cachestore.Store, key string, opts cachestore.Options, data []byte) error {
	t.Helper()
	w, err := s.Create(t.Context(), key, opts)
	if err != nil {
		return err
	}
	defer w.Cancel()
	if _, err := w.Write(data); err != nil {
		return err
	}
	return w.Commit(t.Context(), digest.FromBytes(data))
}

// mustPut is put for data the test needs stored.
func mustPut(t *testing.T, s cachestore.Store, key string, data []byte) {
	t.Helper()
	if err := put(t, s, key, data); err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
}

// spoolFiles lists the names in d's spool directory.
func spoolFiles(t *testing.T, d *cachestore.Disk) []string {
	t.Helper()
	entries, err := os.ReadDir(d.SpoolDir())
	if err != nil {
		t.Fatalf("read spool: %v", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestNewDiskSweepsSpool(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	data := []byte("committed before the crash")
	key := cachestore.BlobKey(digest.FromBytes(data))
	mustPut(t, newDisk(t, root), key, data)

	// What a crash mid-write leaves behind: a spool file and a fill's
	// spool subdirectory.
	spool := filepath.Join(root, "tmp")
	if err := os.WriteFile(filepath.Join(spool, "create-123"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(spool, "fill", "x"), 0o755); err != nil {
		t.Fatal(err)
	}

	d := newDisk(t, root)
	if got := spoolFiles(t, d); len(got) != 0 {
		t.Errorf("spool after NewDisk holds %q, want nothing", got)
	}
	if _, err := d.Stat(t.Context(), key); err != nil {
		t.Errorf("committed entry after NewDisk: Stat = %v, want nil", err)
	}
}

func TestDiskLayout(t *testing.T) {
	t.Parallel()
	dg := digest.FromString("layout")
	hex := dg.Encoded()
	tests := []struct {
		name string
		key  string
		want string // slash-separated, relative to the root
	}{
		{"blob", cachestore.BlobKey(dg), "blobs/sha256/" + hex[:2] + "/" + hex},
		{"manifest", cachestore.ManifestKey(dg), "manifests/sha256/" + hex[:2] + "/" + hex},
		{"manifest meta", cachestore.ManifestMetaKey(dg), "manifests/sha256/" + hex[:2] + "/" + hex + ".meta"},
		{"tag", cachestore.TagKey("ff01"), "tags/ff/ff01"},
		{"short name", "x/y", "x/y/y"},
		{"one component", "tmpfile", "tm/tmpfile"},
	}
	root := t.TempDir()
	d := newDisk(t, root)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			data := []byte(tt.name)
			mustPut(t, d, tt.key, data)
			want := filepath.Join(root, filepath.FromSlash(tt.want))
			got, err := os.ReadFile(want)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("ReadFile(%s) = %q, %v; want %q, nil", want, got, err, data)
			}
			if p, err := cachestore.DiskPath(d, tt.key); p != want || err != nil {
				t.Errorf("DiskPath(%q) = %s, %v; want %s, nil", tt.key, p, err, want)
			}
		})
	}
	if got := spoolFiles(t, d); len(got) != 0 {
		t.Errorf("spool after commits holds %q, want nothing", got)
	}
}

// TestDiskTypedLayout checks where an entry with a media type lives: beside
// the key's own file, in one file whose first line is the type.
func TestDiskTypedLayout(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	d := newDisk(t, root)
	const mt = "application/vnd.oci.image.manifest.v1+json"
	body := []byte(`{"schemaVersion":2}`)
	dg := digest.FromBytes(body)
	hex := dg.Encoded()
	tests := []struct{ key, want string }{
		{cachestore.ManifestKey(dg), "manifests/sha256/" + hex[:2] + "/" + hex + "~typed"},
		{"z", "z/z~typed"},
		{"x/yy", "x/yy/yy~typed"},
	}
	for _, tt := range tests {
		if err := putOpts(t, d, tt.key, cachestore.Options{Kind: cachestore.Content, MediaType: mt}, body); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(tt.want)))
		if want := mt + "\n" + string(body); err != nil || string(got) != want {
			t.Errorf("%s: file %s holds %q, %v; want %q", tt.key, tt.want, got, err, want)
		}
		p, _ := cachestore.DiskPath(d, tt.key)
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: untyped file: Stat = %v, want ErrNotExist", tt.key, err)
		}
	}
}

// TestDiskRecordChangesFile moves a record between its two files as its
// media type comes and goes: one file is left each time, and a walk sees
// one entry.
func TestDiskRecordChangesFile(t *testing.T) {
	t.Parallel()
	d := newDisk(t, t.TempDir())
	key := cachestore.TagKey("abcd")
	p, _ := cachestore.DiskPath(d, key)
	for i, mt := range []string{"", "text/plain", "application/json", "", "text/plain"} {
		data := []byte(fmt.Sprint("record ", i))
		if err := putOpts(t, d, key, cachestore.Options{Kind: cachestore.Record, MediaType: mt}, data); err != nil {
			t.Fatal(err)
		}
		_, errUntyped := os.Stat(p)
		_, errTyped := os.Stat(p + "~typed")
		if (errUntyped == nil) != (mt == "") || (errTyped == nil) != (mt != "") {
			t.Errorf("after a commit with media type %q: untyped file %v, typed file %v; want only the %s one",
				mt, errUntyped, errTyped, map[bool]string{true: "untyped", false: "typed"}[mt == ""])
		}
		r, err := d.Open(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(r)
		if !bytes.Equal(got, data) || r.MediaType() != mt {
			t.Errorf("read %q of type %q, want %q of type %q", got, r.MediaType(), data, mt)
		}
		r.Close()
		var n int
		d.Walk(t.Context(), func(e cachestore.Entry) error {
			if e.Key != key {
				t.Errorf("Walk reported %q, want %q", e.Key, key)
			}
			n++
			return nil
		})
		if n != 1 {
			t.Errorf("Walk reported %d entries, want 1", n)
		}
	}
}

// TestDiskBothFiles is what a crash between the two steps of a record's
// commit leaves: both files. Open reads the untyped one, and a delete
// removes both.
func TestDiskBothFiles(t *testing.T) {
	t.Parallel()
	d := newDisk(t, t.TempDir())
	key := cachestore.TagKey("ef01")
	p, _ := cachestore.DiskPath(d, key)
	mustPut(t, d, key, []byte("untyped"))
	if err := os.WriteFile(p+"~typed", []byte("text/plain\ntyped"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := d.Open(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if string(got) != "untyped" || r.MediaType() != "" {
		t.Errorf("Open read %q of type %q, want the untyped file", got, r.MediaType())
	}
	if ok, err := d.DeleteIf(t.Context(), key, func() bool { return true }); !ok || err != nil {
		t.Fatalf("DeleteIf = %v, %v", ok, err)
	}
	for _, f := range []string{p, p + "~typed"} {
		if _, err := os.Stat(f); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after DeleteIf: %v, want it gone", f, err)
		}
	}
}

// TestDiskTypedFileWithoutTypeLine opens a typed file that holds no media
// type line (damaged by hand): an error, not a miss and not the bytes.
func TestDiskTypedFileWithoutTypeLine(t *testing.T) {
	t.Parallel()
	d := newDisk(t, t.TempDir())
	key := cachestore.TagKey("ef02")
	p, _ := cachestore.DiskPath(d, key)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p+"~typed", bytes.Repeat([]byte("x"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := d.Open(t.Context(), key)
	if err == nil {
		r.Close()
	}
	if err == nil || errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("Open = %v, want an error other than ErrNotFound", err)
	}
}

// TestDiskSpoolEmptyAfterWriters checks that no way of ending a writer
// leaves its spool file behind.
func TestDiskSpoolEmptyAfterWriters(t *testing.T) {
	t.Parallel()
	data := []byte("spooled")
	tests := []struct {
		name string
		end  func(w cachestore.Writer) error
	}{
		{"commit", func(w cachestore.Writer) error { return w.Commit(t.Context(), digest.FromBytes(data)) }},
		{"mismatch", func(w cachestore.Writer) error { return w.Commit(t.Context(), digest.FromString("x")) }},
		{"other algorithm mismatch", func(w cachestore.Writer) error {
			return w.Commit(t.Context(), digest.SHA512.FromString("x"))
		}},
		{"malformed digest", func(w cachestore.Writer) error { return w.Commit(t.Context(), "sha256:zz") }},
		{"cancel", func(w cachestore.Writer) error { return w.Cancel() }},
	}
	for _, tt := range tests {
		for _, opts := range []cachestore.Options{record, content, {Kind: cachestore.Content, MediaType: "text/plain"}} {
			t.Run(fmt.Sprint(tt.name, opts), func(t *testing.T) {
				t.Parallel()
				d := newDisk(t, t.TempDir())
				if opts.Kind == cachestore.Content {
					// A second commit of a Content key removes its file.
					mustPut(t, d, cachestore.TagKey("ab"), []byte("before"))
				}
				w, err := d.Create(t.Context(), cachestore.TagKey("ab"), opts)
				if err != nil {
					t.Fatalf("Create: %v", err)
				}
				if _, err := w.Write(data); err != nil {
					t.Fatalf("Write: %v", err)
				}
				tt.end(w)
				if got := spoolFiles(t, d); len(got) != 0 {
					t.Errorf("spool holds %q, want nothing", got)
				}
			})
		}
	}
}

// walk lists every path under dir.
func walk(t *testing.T, dir string) []string {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return paths
}

func TestDiskInvalidKeysTouchNothing(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	d := newDisk(t, filepath.Join(parent, "store"))
	src := filepath.Join(d.SpoolDir(), "import-src")
	if err := os.WriteFile(src, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := walk(t, parent)
	keys := []string{"", "../x", "/abs", "a//b", "a/../b", "A/b", "a/.hidden",
		"..", "../../etc/passwd", "a/b/..", "tmp/x", "tmp/ab/abc", strings.Repeat("a", 600)}
	for _, key := range keys {
		if _, err := d.Stat(t.Context(), key); !errors.Is(err, cachestore.ErrInvalidKey) {
			t.Errorf("Stat(%q) = %v, want ErrInvalidKey", key, err)
		}
		if err := put(t, d, key, []byte("x")); !errors.Is(err, cachestore.ErrInvalidKey) {
			t.Errorf("put(%q) = %v, want ErrInvalidKey", key, err)
		}
		if err := d.ImportFile(t.Context(), key, src, 1, digest.FromString("x")); !errors.Is(err, cachestore.ErrInvalidKey) {
			t.Errorf("ImportFile(%q) = %v, want ErrInvalidKey", key, err)
		}
		if err := d.Delete(t.Context(), key); !errors.Is(err, cachestore.ErrInvalidKey) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidKey", key, err)
		}
	}
	if after := walk(t, parent); !slices.Equal(after, before) {
		t.Errorf("files after invalid keys = %q, want %q", after, before)
	}
}

// TestDiskDirectoryIsNotAnEntry covers a key whose file path is a directory
// made for longer keys: "q" lives at q/q, which "q/q/r" (at q/q/r/r) makes.
func TestDiskDirectoryIsNotAnEntry(t *testing.T) {
	t.Parallel()
	d := newDisk(t, t.TempDir())
	mustPut(t, d, "q/q/r", []byte("longer key"))
	if _, err := d.Stat(t.Context(), "q"); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("Stat(q) = %v, want ErrNotFound", err)
	}
	if _, err := d.Open(t.Context(), "q"); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("Open(q) = %v, want ErrNotFound", err)
	}
	if err := d.Delete(t.Context(), "q"); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("Delete(q) = %v, want ErrNotFound", err)
	}
	if err := put(t, d, "q", []byte("short key")); err == nil {
		t.Error("put(q) over a directory = nil, want an error")
	}
	// Its typed file is beside the directory, not in its place.
	typed := cachestore.Options{Kind: cachestore.Content, MediaType: "text/plain"}
	if err := putOpts(t, d, "q", typed, []byte("typed")); err != nil {
		t.Errorf("put(q) with a media type: %v", err)
	}
	if r, err := d.Open(t.Context(), "q"); err != nil || r.MediaType() != "text/plain" {
		t.Errorf("Open(q) = %v; want the typed entry", err)
	} else {
		r.Close()
	}
	if got := spoolFiles(t, d); len(got) != 0 {
		t.Errorf("spool after a failed commit holds %q, want nothing", got)
	}
}

// TestDiskReaderOutlivesEntry checks that a reader keeps the bytes it opened
// when the entry is replaced and then deleted, as happens when a tag moves
// or eviction runs while a client downloads.
func TestDiskReaderOutlivesEntry(t *testing.T) {
	t.Parallel()
	d := newDisk(t, t.TempDir())
	key := cachestore.TagKey("abcd")
	first := []byte("first record")
	mustPut(t, d, key, first)
	r, err := d.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer r.Close()
	mustPut(t, d, key, []byte("second record"))
	if err := d.Delete(t.Context(), key); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, first) {
		t.Errorf("read after replace and delete = %q, %v; want %q, nil", got, err, first)
	}
}

// FuzzValidKey checks that every key ValidKey accepts maps to a file inside
// the root, outside the spool, and that dropping the fan-out directory from
// that path gives the key back (so no two keys share a file).
func FuzzValidKey(f *testing.F) {
	for _, key := range []string{
		cachestore.BlobKey(digest.FromString("a")), cachestore.ManifestMetaKey(digest.FromString("b")),
		cachestore.TagKey("ff01"), "a", "x/y", "tmp", "tmp/x", "tmpx/y",
		"", "..", "../x", "a/..", "a/.b", "A", "a//b", "/a", "a/b\x00", "a\\b",
	} {
		f.Add(key)
	}
	root := f.TempDir()
	d := newDisk(f, root)
	f.Fuzz(func(t *testing.T, key string) {
		p, err := cachestore.DiskPath(d, key)
		if !cachestore.ValidKey(key) || strings.HasPrefix(key, "tmp/") {
			if !errors.Is(err, cachestore.ErrInvalidKey) {
				t.Fatalf("DiskPath(%q) = %q, %v; want ErrInvalidKey", key, p, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("DiskPath(%q): %v", key, err)
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || !filepath.IsLocal(rel) {
			t.Fatalf("DiskPath(%q) = %q, not inside %q", key, p, root)
		}
		parts := strings.Split(filepath.ToSlash(rel), "/")
		if slices.Contains(parts, "..") || slices.Contains(parts, ".") || parts[0] == "tmp" {
			t.Fatalf("DiskPath(%q) = %q, want no dot components and not in the spool", key, rel)
		}
		n := len(parts)
		name, fan := parts[n-1], parts[n-2]
		if want := name[:min(2, len(name))]; fan != want {
			t.Errorf("DiskPath(%q) = %q, fan-out directory %q, want %q", key, rel, fan, want)
		}
		if back := strings.Join(append(parts[:n-2:n-2], name), "/"); back != key {
			t.Errorf("DiskPath(%q) = %q, which maps back to %q", key, rel, back)
		}
	})
}
