package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// setupNodeTimeout bounds one run of setup-node.sh. --help must return well
// within it: it used to be taken for a host name and fetched with retries.
const setupNodeTimeout = 5 * time.Second

// setupNode runs scripts/setup-node.sh with REGPROXY_SETUP_ROOT=root, so
// that it writes only under root and runs no update-ca-* or systemctl.
// Those commands are also stubbed on PATH, to record a call and fail: a
// script that ignored REGPROXY_SETUP_ROOT must not activate anything on the
// machine that runs the tests, which may be root.
type setupNode struct {
	script string
	root   string
	stubs  string // directory of the stub commands, first on PATH
	called string // file the stubs append their names to
}

// systemCommands are the commands through which setup-node.sh changes the
// running system.
var systemCommands = []string{"systemctl", "update-ca-certificates", "update-ca-trust"}

// newSetupNode makes a fake root in which docker.service exists and
// containerd.service does not. rhel gives it RHEL's trust store layout.
func newSetupNode(t *testing.T, rhel bool) *setupNode {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "setup-node.sh"))
	if err != nil {
		t.Fatal(err)
	}
	stubs := t.TempDir()
	s := &setupNode{script: script, root: t.TempDir(), stubs: stubs, called: filepath.Join(stubs, "called")}
	for _, name := range systemCommands {
		stub := "#!/bin/sh\necho " + name + " >>'" + s.called + "'\nexit 97\n"
		if err := os.WriteFile(filepath.Join(stubs, name), []byte(stub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.write(t, "lib/systemd/system/docker.service", "[Service]\n")
	if rhel {
		if err := os.MkdirAll(filepath.Join(s.root, "etc/pki/ca-trust/source/anchors"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s *setupNode) write(t *testing.T, name, data string) {
	t.Helper()
	path := filepath.Join(s.root, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// run runs the script and returns its exit code and output.
func (s *setupNode) run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), setupNodeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{s.script}, args...)...)
	cmd.Env = []string{"PATH=" + s.stubs + ":" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "REGPROXY_SETUP_ROOT=" + s.root}
	// A killed script may leave a curl holding the output pipes.
	cmd.WaitDelay = time.Second
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if called, _ := os.ReadFile(s.called); len(called) > 0 {
		t.Fatalf("setup-node.sh %q ran system commands despite REGPROXY_SETUP_ROOT: %q", args, called)
	}
	if ctx.Err() != nil {
		t.Fatalf("setup-node.sh %q: still running after %v", args, setupNodeTimeout)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		code = ee.ExitCode()
	default:
		t.Fatalf("setup-node.sh: %v", err)
	}
	return code, out.String(), errOut.String()
}

// files lists the regular files under the fake root, relative to it.
func (s *setupNode) files(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(s.root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(s.root, path)
			files = append(files, rel)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}

func (s *setupNode) read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.root, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSetupNode runs scripts/setup-node.sh against the /ca.crt of a real
// regproxy, in a fake root: a wrong --ca-sha256 installs nothing, a right
// one installs the CA and the docker drop-in, and --help and bad usage
// answer at once without fetching anything.
func TestSetupNode(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "--registries", "registry.test")
	code, caPEM, err := d.get("/ca.crt")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /ca.crt: %d, %v", code, err)
	}
	block, _ := pem.Decode(caPEM)
	if block == nil {
		t.Fatalf("/ca.crt is not PEM: %q", caPEM)
	}
	sum := sha256.Sum256(block.Bytes)
	fp := hex.EncodeToString(sum[:])
	if !strings.Contains(d.log.String(), `"ca_sha256":"`+fp+`"`) {
		t.Fatalf("regproxy did not log ca_sha256 %s:\n%s", fp, d.log)
	}
	colons := strings.ToUpper(strings.Join(splitEvery(fp, 2), ":")) // as openssl -fingerprint prints it
	wrong := strings.Repeat("0", 64)

	const debianCA, rhelCA = "usr/local/share/ca-certificates/regproxy.crt", "etc/pki/ca-trust/source/anchors/regproxy.crt"
	for _, tc := range []struct {
		name      string
		args      []string
		rhel      bool
		code      int
		stdout    string // what stdout must contain
		stderr    string // what stderr must contain, or "" for empty
		installed string // where the CA must land, or "" for nothing written
	}{
		{"help", []string{"--help"}, false, 0, "Usage: setup-node.sh", "", ""},
		{"h", []string{"-h", d.addr}, false, 0, "REGPROXY_SETUP_ROOT", "", ""},
		{"unknown option", []string{"--bogus", d.addr}, false, 2, "", "unknown option --bogus\nUsage:", ""},
		{"no proxy", nil, false, 2, "", "want one PROXY_HOST", ""},
		{"two proxies", []string{d.addr, d.addr}, false, 2, "", "want one PROXY_HOST", ""},
		{"ca-sha256 without value", []string{d.addr, "--ca-sha256"}, false, 2, "", "--ca-sha256 needs a value", ""},
		{"ca-sha256 not hex", []string{"--ca-sha256", "xyz", d.addr}, false, 2, "", "want 64 hex digits", ""},
		{"wrong ca-sha256", []string{"--ca-sha256", wrong, d.addr}, false, 1, "ca_sha256=" + fp,
			"does not match --ca-sha256 " + wrong + "; nothing installed", ""},
		{"right ca-sha256", []string{"--ca-sha256", fp, d.addr}, false, 0, "ca_sha256=" + fp, "", debianCA},
		{"right ca-sha256 with colons", []string{"--ca-sha256=" + colons, d.addr}, false, 0, "ca_sha256=" + fp, "", debianCA},
		{"no ca-sha256", []string{d.addr}, false, 0, "ca_sha256=" + fp, "", debianCA},
		{"rhel", []string{"--ca-sha256", fp, d.addr}, true, 0, "ca_sha256=" + fp, "", rhelCA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSetupNode(t, tc.rhel)
			before := s.files(t)
			code, stdout, stderr := s.run(t, tc.args...)
			if code != tc.code || !strings.Contains(stdout, tc.stdout) ||
				(tc.stderr == "") != (stderr == "") || !strings.Contains(stderr, tc.stderr) {
				t.Fatalf("exit code %d, want %d; stdout:\n%s\nstderr:\n%s\nwant stdout with %q, stderr with %q",
					code, tc.code, stdout, stderr, tc.stdout, tc.stderr)
			}
			if tc.installed == "" {
				if after := s.files(t); !slices.Equal(after, before) {
					t.Errorf("files under the root = %q, want only %q", after, before)
				}
				return
			}
			checkInstalled(t, s, tc.installed, string(caPEM), "HTTPS_PROXY=http://"+d.addr+"/")
			// Run again: all in place, so nothing is rewritten.
			if code, stdout, _ := s.run(t, tc.args...); code != 0 || strings.Count(stdout, "unchanged") != 2 {
				t.Errorf("second run: exit code %d, stdout:\n%s\nwant 0, CA and drop-in unchanged", code, stdout)
			}
		})
	}
}

// checkInstalled checks what a successful run leaves in the fake root: the
// CA, byte for byte as regproxy serves it, at caFile, and a docker drop-in
// naming the proxy, but none for containerd, whose unit does not exist.
func checkInstalled(t *testing.T, s *setupNode, caFile, caPEM, proxyEnv string) {
	t.Helper()
	dropin := "etc/systemd/system/docker.service.d/http-proxy.conf"
	want := []string{caFile, dropin, "lib/systemd/system/docker.service"}
	slices.Sort(want)
	if got := s.files(t); !slices.Equal(got, want) {
		t.Errorf("files under the root = %q, want %q", got, want)
	}
	if got := s.read(t, caFile); got != caPEM {
		t.Errorf("installed CA:\n%s\nwant what regproxy serves:\n%s", got, caPEM)
	}
	if got := s.read(t, dropin); !strings.Contains(got, proxyEnv) {
		t.Errorf("drop-in:\n%s\nwant it to set %s", got, proxyEnv)
	}
}

// splitEvery cuts s into pieces of n bytes.
func splitEvery(s string, n int) []string {
	var parts []string
	for len(s) > n {
		parts, s = append(parts, s[:n]), s[n:]
	}
	return append(parts, s)
}

// TestShellcheck keeps the scripts that nodes and CI run free of
// shellcheck findings. shellcheck comes with make test-deps.
func TestShellcheck(t *testing.T) {
	t.Parallel()
	path, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Fatal("shellcheck missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	scripts, err := filepath.Glob(filepath.Join("..", "..", "scripts", "*.sh"))
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no scripts found: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, path, scripts...).CombinedOutput(); err != nil {
		t.Errorf("shellcheck %s: %v\n%s", strings.Join(scripts, " "), err, out)
	}
}
