package ca

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// caSync is one call of syncFile while a CA is written.
type caSync struct {
	path      string // relative to the test's directory; "tmp key" or "tmp cert" for a temporary file
	cert, key bool   // whether ca.crt and ca.key existed at the time
}

// recordCASyncs replaces syncFile until the test ends, recording each call
// relative to base, with the state of dir's files at the time. Tests that
// use it must not run in parallel: syncFile is a package variable.
func recordCASyncs(t *testing.T, base, dir string) *[]caSync {
	var got []caSync
	exists := func(name string) bool { _, err := os.Stat(filepath.Join(dir, name)); return err == nil }
	syncFile = func(f *os.File) error {
		rel, _ := filepath.Rel(base, f.Name())
		switch name := filepath.Base(rel); {
		case strings.HasPrefix(name, ".tmp-"+keyName):
			rel = "tmp key"
		case strings.HasPrefix(name, ".tmp-"+certName):
			rel = "tmp cert"
		}
		got = append(got, caSync{path: rel, cert: exists(certName), key: exists(keyName)})
		return f.Sync()
	}
	t.Cleanup(func() { syncFile = (*os.File).Sync })
	return &got
}

// TestCreateSyncs checks that writing a CA syncs each file before it is
// renamed into place, and the directory after each rename, in the order
// that keeps a complete pair on disk whatever a power cut interrupts: the
// new directories first, then (when replacing a CA) the removal of the
// old certificate, then the key, then the certificate.
func TestCreateSyncs(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "data", "ca")
	got := recordCASyncs(t, base, dir)
	if _, err := LoadOrCreate(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	want := []caSync{
		{path: "data"}, // holds the new ca directory
		{path: "."},    // holds the new data directory
		{path: "tmp key"},
		{path: "data/ca", key: true},
		{path: "tmp cert", key: true},
		{path: "data/ca", key: true, cert: true},
	}
	if !slices.Equal(*got, want) {
		t.Errorf("first start, syncs:\n got  %+v\n want %+v", *got, want)
	}

	*got = nil
	if _, err := Generate(dir, nil, Options{}); err != nil {
		t.Fatal(err)
	}
	want = []caSync{
		{path: "data/ca", key: true}, // the old certificate's removal
		{path: "tmp key", key: true},
		{path: "data/ca", key: true},
		{path: "tmp cert", key: true},
		{path: "data/ca", key: true, cert: true},
	}
	if !slices.Equal(*got, want) {
		t.Errorf("replacing the CA, syncs:\n got  %+v\n want %+v", *got, want)
	}
}
