package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regproxy/regproxy/ca"
)

// The tests of this file hold the fixes of a new user's first run (issue
// 13): ca print never generates a CA, a bad --listen is a bad value, and a
// start that fails leaves no CA behind.

// TestCAPrintNoCA checks that ca print, given a data directory without a
// CA (the default one, on a fresh machine), fails with one line that says
// what to do, and writes nothing: a CA it generated would be one that no
// regproxy serves.
func TestCAPrintNoCA(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"plain", nil},
		{"name constraints", []string{"--ca-name-constraints", "--registries", "registry.test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			code, stdout, stderr := runCLI(t, append([]string{"ca", "print", "--data-dir", dataDir}, tc.extra...)...)
			wantRuntimeError(t, "no CA in "+filepath.Join(dataDir, "ca"), code, stdout, stderr)
			wantRuntimeError(t, "regproxy ca init --data-dir "+dataDir, code, stdout, stderr)
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Errorf("ca print created %s (stat: %v)", dataDir, err)
			}
		})
	}
}

// TestListenValue checks --listen as flag parsing does: what net.Listen
// takes passes, anything else is a bad value, exit 2, before the data
// directory is touched.
func TestListenValue(t *testing.T) {
	for _, addr := range []string{":3128", "127.0.0.1:0", "[::1]:3128", "[::]:3128", "localhost:3128",
		"proxy-1.example.com:3128", ":http", "[fe80::1%lo]:3128"} {
		if err := checkListen(addr); err != nil {
			t.Errorf("checkListen(%q) = %v, want nil", addr, err)
		}
	}
	for _, addr := range []string{"bogus", "3128", "127.0.0.1", "127.0.0.1:", ":99999", ":-1", ":nosuchservice",
		"::1:3128", "bad host!:3128", "under_score:3128", "-lead.example:3128", "http://127.0.0.1:3128"} {
		t.Run(addr, func(t *testing.T) {
			if checkListen(addr) == nil {
				t.Errorf("checkListen(%q) = nil, want an error", addr)
			}
			dataDir := t.TempDir()
			code, stdout, stderr := runCLI(t, "serve", "--listen", addr, "--data-dir", dataDir)
			wantUsageError(t, "--listen", code, stdout, stderr)
			if entries, _ := os.ReadDir(dataDir); len(entries) > 0 {
				t.Errorf("a bad --listen wrote %s", entries[0].Name())
			}
		})
	}
}

// TestBindFailureWritesNoCA checks that a first start whose port is taken
// fails with exit 1 before it generates the CA.
func TestBindFailureWritesNoCA(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dataDir := filepath.Join(t.TempDir(), "data")
	code, stdout, stderr := runCLI(t, "serve", "--listen", taken.Addr().String(), "--data-dir", dataDir)
	wantRuntimeError(t, "--listen: listen tcp "+taken.Addr().String(), code, stdout, stderr)
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("a start that failed to bind created %s (stat: %v)", dataDir, err)
	}
}

// TestFailedStartRemovesCA checks what a start that fails after the CA is
// loaded (here the cache cannot be opened) leaves in DATA_DIR/ca: nothing,
// if it generated the CA (never served nor logged, so trusted by no node),
// and the CA as it was, if there was one.
func TestFailedStartRemovesCA(t *testing.T) {
	breakCache := func(t *testing.T, dataDir string) {
		t.Helper()
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dataDir, "cache"), nil, 0o600); err != nil { // a file where a directory must be
			t.Fatal(err)
		}
	}
	t.Run("generated", func(t *testing.T) {
		dataDir := t.TempDir()
		breakCache(t, dataDir)
		code, stdout, stderr := runCLI(t, serveArgsIn(dataDir)...)
		wantRuntimeError(t, "regproxy: cache in ", code, stdout, stderr)
		if _, err := os.Stat(filepath.Join(dataDir, "ca")); !os.IsNotExist(err) {
			t.Errorf("DATA_DIR/ca is still there (stat: %v)", err)
		}
	})
	t.Run("existing", func(t *testing.T) {
		dataDir := t.TempDir()
		before := loadDir(t, initCA(t, dataDir))
		breakCache(t, dataDir)
		code, stdout, stderr := runCLI(t, serveArgsIn(dataDir)...)
		wantRuntimeError(t, "regproxy: cache in ", code, stdout, stderr)
		exists, err := ca.Exists(filepath.Join(dataDir, "ca"))
		if err != nil || !exists {
			t.Fatalf("the CA that was there before is gone: %v", err)
		}
		if after := loadDir(t, filepath.Join(dataDir, "ca")); string(after.CertPEM()) != string(before.CertPEM()) {
			t.Error("the CA that was there before was replaced")
		}
	})
}

// TestReadmeTestRequirements keeps the README's account of what make test
// needs true: the Go of go.mod, root, and every Debian package that
// scripts/install-test-deps.sh may install.
func TestReadmeTestRequirements(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, para, _ := strings.Cut(string(readme), "\n`make test` needs ")
	para, _, _ = strings.Cut(para, "\n\n")
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	_, goLine, _ := strings.Cut(string(gomod), "\ngo ")
	goVersion, _, _ := strings.Cut(goLine, "\n")
	if !strings.Contains(para, "Go "+goVersion+" or later") || !strings.Contains(para, "as root") {
		t.Errorf("README's make test paragraph %q does not say Go %s or later, and root", para, goVersion)
	}
	deps, err := os.ReadFile("../../scripts/install-test-deps.sh")
	if err != nil {
		t.Fatal(err)
	}
	_, list, _ := strings.Cut(string(deps), "\ndeps=(\n")
	list, _, _ = strings.Cut(list, "\n)\n")
	var packages []string
	for line := range strings.Lines(list) {
		line = strings.TrimSpace(line)
		if entry, ok := strings.CutPrefix(line, `"`); ok {
			_, pkgs, _ := strings.Cut(strings.TrimSuffix(entry, `"`), ":")
			packages = append(packages, strings.Fields(pkgs)...)
		}
	}
	if len(packages) == 0 {
		t.Fatal("no deps in scripts/install-test-deps.sh")
	}
	for _, pkg := range packages {
		if !strings.Contains(para, "`"+pkg+"`") {
			t.Errorf("README's make test paragraph does not name %s, which install-test-deps.sh installs", pkg)
		}
	}
}
