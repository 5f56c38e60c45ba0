package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The node setup scripts (scripts/setup-*.sh) run here as a node runs
// them, under dash (Debian's sh), with --root: every file goes under a
// temporary directory and no command that changes the system runs. The
// commands that would (systemctl, update-ca-*) are stubs first on PATH
// that record a call and fail, so that a script that ignored --root could
// not touch the machine that runs the tests, which is root.
//
// What a script writes is compared with golden files in testdata/setup,
// which go test -run TestSetupGolden -update rewrites.

// setupTimeout bounds one run of a script. --help must return well within
// setupHelpTimeout: it once was taken for a host name and fetched with
// retries.
const (
	setupTimeout     = 20 * time.Second
	setupHelpTimeout = 2 * time.Second
)

// setupCAFile is a CA that gen-ca.sh made once (its key thrown away), so
// that the golden files hold a fixed fingerprint.
const setupCAFile = "testdata/setup/ca.crt"

// systemCommands change the running system; a run under --root must
// call none of them.
var systemCommands = []string{"systemctl", "update-ca-certificates", "update-ca-trust"}

// scriptPath returns the absolute path of scripts/name.
func scriptPath(t *testing.T, name string) string {
	t.Helper()
	path, err := filepath.Abs(filepath.Join("..", "..", "scripts", name))
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// pemFingerprint returns the fingerprint of the one certificate in a PEM
// file, as regproxy logs it: lowercase hex of the SHA-256 of the DER.
func pemFingerprint(t *testing.T, file string) string {
	t.Helper()
	sum := sha256.Sum256(readCert(t, file).Raw)
	return hex.EncodeToString(sum[:])
}

// nodeRoot is a fake node's root directory for setup scripts.
type nodeRoot struct {
	dir    string
	stubs  string   // directory of the stub commands, first on PATH
	called string   // file the stubs append their names to
	env    []string // added to the environment of the scripts, NAME=value
}

// newNodeRoot makes a root holding seed: file path (relative) → content;
// a path that ends in "/" is an empty directory. The commands in
// systemCommands and stubbed are stubs that record a call and fail.
func newNodeRoot(t *testing.T, seed map[string]string, stubbed ...string) *nodeRoot {
	t.Helper()
	stubs := t.TempDir()
	n := &nodeRoot{dir: t.TempDir(), stubs: stubs, called: filepath.Join(stubs, "called")}
	for _, name := range append(slices.Clone(systemCommands), stubbed...) {
		stub := "#!/bin/sh\necho " + name + " >>'" + n.called + "'\nexit 97\n"
		if err := os.WriteFile(filepath.Join(stubs, name), []byte(stub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range seed {
		path := filepath.Join(n.dir, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(path, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// scriptRun is the outcome of one run of a script.
type scriptRun struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

func (r scriptRun) String() string {
	return fmt.Sprintf("exit status %d after %v\nstdout:\n%s\nstderr:\n%s", r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
}

// runFile runs scripts/name with --root n.dir and args, as an admin runs a
// checkout's script: sh FILE ARGS.
func (n *nodeRoot) runFile(t *testing.T, name string, args ...string) scriptRun {
	t.Helper()
	return n.sh(t, nil, setupTimeout, append([]string{scriptPath(t, name), "--root", n.dir}, args...)...)
}

// runServed runs a script regproxy served, as the README's one-liner does:
// piped into sh -s -- --root n.dir ARGS.
func (n *nodeRoot) runServed(t *testing.T, script []byte, args ...string) scriptRun {
	t.Helper()
	return n.sh(t, script, setupTimeout, append([]string{"-s", "--", "--root", n.dir}, args...)...)
}

// sh runs sh with args and stdin, within timeout, and fails the test if a
// stubbed system command was called.
func (n *nodeRoot) sh(t *testing.T, stdin []byte, timeout time.Duration, args ...string) scriptRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", args...)
	cmd.Env = append([]string{"PATH=" + n.stubs + ":" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, n.env...)
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.WaitDelay = time.Second // a killed script may leave a curl holding the pipes
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := scriptRun{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	if called, _ := os.ReadFile(n.called); len(called) > 0 {
		t.Fatalf("sh %q ran commands it must not: %q\n%s", args, called, r)
	}
	if ctx.Err() != nil {
		t.Fatalf("sh %q: still running after %v\n%s", args, timeout, r)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("sh %q: %v", args, err)
	}
	return r
}

// treeEntry is a file or directory under a root.
type treeEntry struct {
	mode fs.FileMode
	data string // a file's content
}

// tree returns every file and directory under the root, by relative path.
func (n *nodeRoot) tree(t *testing.T) map[string]treeEntry {
	t.Helper()
	tree := map[string]treeEntry{}
	err := filepath.WalkDir(n.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == n.dir {
			return err
		}
		rel, _ := filepath.Rel(n.dir, path)
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := treeEntry{mode: info.Mode()}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			e.data = string(b)
		}
		tree[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func (n *nodeRoot) read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// diffTrees describes how two trees differ, or returns "" if they do not.
func diffTrees(before, after map[string]treeEntry) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(after)) {
		if old, ok := before[name]; !ok {
			fmt.Fprintf(&b, "added %s\n", name)
		} else if old != after[name] {
			fmt.Fprintf(&b, "changed %s\n", name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(before)) {
		if _, ok := after[name]; !ok {
			fmt.Fprintf(&b, "removed %s\n", name)
		}
	}
	return b.String()
}

// changedFiles lists the regular files that differ between two trees.
func changedFiles(before, after map[string]treeEntry) []string {
	var files []string
	for name, e := range after {
		if e.mode.IsRegular() && before[name] != e {
			files = append(files, name)
		}
	}
	slices.Sort(files)
	return files
}

// setupGolden renders a run and the files it leaves as a golden file: the
// command line, the exit status, the output and each file with its mode.
// The CA the scripts install, byte for byte the one in caPEM, shows as a
// placeholder.
func setupGolden(cmdline string, r scriptRun, tree map[string]treeEntry, caPEM string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n-- exit status --\n%d\n-- stdout --\n%s-- stderr --\n%s", cmdline, r.code, r.stdout, r.stderr)
	for _, name := range slices.Sorted(maps.Keys(tree)) {
		e := tree[name]
		if !e.mode.IsRegular() {
			continue
		}
		data := e.data
		if data == caPEM {
			data = "[the CA certificate, as served]\n"
		}
		fmt.Fprintf(&b, "-- %s %04o --\n%s", name, e.mode.Perm(), data)
	}
	return b.String()
}

// checkSetupGolden compares got with testdata/setup/name.golden, or rewrites
// that file under -update.
func checkSetupGolden(t *testing.T, name, got string) {
	t.Helper()
	file := filepath.Join("testdata", "setup", name+".golden")
	if *update {
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (go test -run TestSetupGolden -update writes it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from what the script did (go test -run TestSetupGolden -update rewrites it)\ngot:\n%s\nwant:\n%s", file, got, want)
	}
}

// debianContainerdConfig is the config.toml Debian 12's containerd ships.
const debianContainerdConfig = `version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
`

// shippedEnrootConf is the head of the enroot.conf enroot's packages ship:
// every key commented out.
const shippedEnrootConf = `#ENROOT_LIBRARY_PATH        /usr/lib/enroot
#ENROOT_SYSCONF_PATH        /etc/enroot

# SSL certificates settings:
#SSL_CERT_DIR
#SSL_CERT_FILE

# Proxy settings:
#all_proxy
#no_proxy
#http_proxy
#https_proxy
`

// setupCase is one run of a setup script into a fresh root.
type setupCase struct {
	name   string // of the golden file
	script string
	args   []string // after the proxy and CA arguments every case gets
	seed   map[string]string
}

func setupCases() []setupCase {
	const mirror, tlsMirror = "http://mirror.test:5000", "https://mirror.test"
	regs := []string{"--registries", "docker.io, Quay.io registry.test:5000 _default"}
	return []setupCase{
		{name: "docker-proxy", script: "setup-docker.sh"},
		{name: "docker-proxy-rhel", script: "setup-docker.sh",
			seed: map[string]string{"etc/pki/ca-trust/source/anchors/": ""}},
		{name: "docker-proxy-password", script: "setup-docker.sh",
			args: []string{"--proxy", "http://node:s%40cret@proxy.test", "--no-proxy", ".corp.example,10.0.0.0/8"}},
		{name: "docker-mirror", script: "setup-docker.sh", args: []string{"--mirror", mirror},
			seed: map[string]string{"etc/docker/daemon.json": "{\n  \"log-driver\": \"journald\",\n  \"nested\": {\"registry-mirrors\": [\"x\"], \"s\": \"}\"},\n" +
				"  \"registry-mirrors\" : [ \"http://old.example:5000\" ],\n  \"live-restore\": true\n}\n"}},
		{name: "docker-mirror-tls", script: "setup-docker.sh", args: []string{"--mirror", tlsMirror + "/"}},
		{name: "docker-mirror-add", script: "setup-docker.sh", args: []string{"--mirror", mirror},
			seed: map[string]string{"etc/docker/daemon.json": `{"data-root":"/srv/docker"}`}},
		{name: "containerd-proxy", script: "setup-containerd.sh",
			args: []string{"--no-proxy", ".svc,.cluster.local,10.96.0.0/12"}},
		{name: "containerd-mirror", script: "setup-containerd.sh", args: append([]string{"--mirror", mirror}, regs...),
			seed: map[string]string{"etc/containerd/config.toml": debianContainerdConfig}},
		{name: "containerd-mirror-noconfig", script: "setup-containerd.sh", args: []string{"--mirror", tlsMirror, "--registries", "docker.io _default"}},
		{name: "containerd-mirror-configpath", script: "setup-containerd.sh", args: []string{"--mirror", mirror, "--registries", "quay.io"},
			seed: map[string]string{"etc/containerd/config.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/hosts:/etc/docker/certs.d\"\n"}},
		{name: "containerd-mirror-legacy", script: "setup-containerd.sh", args: []string{"--mirror", mirror, "--registries", "docker.io"},
			seed: map[string]string{"etc/containerd/config.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://old.example\"]\n"}},
		{name: "podman-proxy", script: "setup-podman.sh"},
		{name: "podman-mirror", script: "setup-podman.sh", args: append([]string{"--mirror", mirror}, regs...)},
		{name: "podman-mirror-tls", script: "setup-podman.sh", args: []string{"--mirror", tlsMirror + ":5443", "--registries", "docker.io"}},
		{name: "enroot-proxy", script: "setup-enroot.sh",
			seed: map[string]string{"etc/enroot/enroot.conf": shippedEnrootConf, "etc/enroot/enroot.conf.d/": ""}},
	}
}

// TestSetupGolden runs each setup script into a fresh root three times:
// with --dry-run, which must change nothing and name every file the real
// run writes; for real, whose output and files must match the golden
// file; and again, which must find everything in place and change nothing.
func TestSetupGolden(t *testing.T) {
	t.Parallel()
	caPEM, err := os.ReadFile(setupCAFile)
	if err != nil {
		t.Fatal(err)
	}
	common := []string{"--proxy", "http://proxy.test:3128/", "--ca-file", setupCAFile, "--ca-sha256", pemFingerprint(t, setupCAFile)}
	for _, tc := range setupCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append(slices.Clone(common), tc.args...)
			n := newNodeRoot(t, tc.seed)
			seeded := n.tree(t)

			dry := n.runFile(t, tc.script, append(args, "--dry-run")...)
			if d := diffTrees(seeded, n.tree(t)); dry.code != 0 || d != "" {
				t.Fatalf("--dry-run changed the root:\n%s%s", d, dry)
			}

			r := n.runFile(t, tc.script, args...)
			after := n.tree(t)
			checkSetupGolden(t, tc.name, setupGolden(tc.script+" "+strings.Join(args, " "), r, after, string(caPEM)))
			for _, name := range changedFiles(seeded, after) {
				if !strings.Contains(dry.stdout, "would write /"+name+":\n") {
					t.Errorf("--dry-run did not say it would write /%s:\n%s", name, dry)
				}
			}
			again := n.runFile(t, tc.script, args...)
			if d := diffTrees(after, n.tree(t)); again.code != 0 || d != "" || strings.Contains(again.stdout, "wrote ") {
				t.Errorf("second run changed the root:\n%s%s", d, again)
			}
			if strings.Contains(again.stdout, "restart") && !strings.Contains(again.stdout, "nothing it reads at start changed; not restarted") {
				t.Errorf("second run would restart a daemon though nothing changed:\n%s", again)
			}
		})
	}
}

// TestSetupRefuses runs the scripts with bad command lines and bad
// configurations. Each must fail with the status and message given,
// quickly, without running a system command, and change nothing.
func TestSetupRefuses(t *testing.T) {
	t.Parallel()
	fp := pemFingerprint(t, setupCAFile)
	ok := []string{"--proxy", "proxy.test", "--ca-file", setupCAFile, "--ca-sha256", fp}
	twoCerts := filepath.Join(t.TempDir(), "two.crt")
	caPEM, err := os.ReadFile(setupCAFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(twoCerts, slices.Concat(caPEM, caPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, script string
		args         []string
		seed         map[string]string
		code         int
		stderr       string
	}{
		{"no ca-sha256", "setup-docker.sh", []string{"--proxy", "proxy.test", "--ca-file", setupCAFile}, nil,
			2, "--ca-sha256 HEX is required"},
		{"wrong ca-sha256", "setup-containerd.sh", []string{"--proxy", "proxy.test", "--ca-file", setupCAFile, "--ca-sha256", strings.Repeat("0", 64)}, nil,
			1, "ca_sha256=" + fp + " from " + setupCAFile + " does not match --ca-sha256 " + strings.Repeat("0", 64) + "; nothing changed"},
		{"ca-sha256 not hex", "setup-podman.sh", []string{"--proxy", "proxy.test", "--ca-sha256", "xyz"}, nil,
			2, "want 64 hex digits"},
		{"ca-sha256 and insecure", "setup-enroot.sh", append(slices.Clone(ok), "--insecure-skip-fingerprint"), nil,
			2, "exclude each other"},
		{"ca-sha256 without value", "setup-docker.sh", []string{"--proxy", "proxy.test", "--ca-sha256"}, nil,
			2, "--ca-sha256 needs a value"},
		{"two certificates", "setup-docker.sh", []string{"--proxy", "proxy.test", "--ca-file", twoCerts, "--ca-sha256", fp}, nil,
			1, "holds 2 PEM certificates, want 1"},
		{"unknown option", "setup-docker.sh", append(slices.Clone(ok), "--bogus"), nil, 2, "unknown option --bogus"},
		{"host as argument", "setup-docker.sh", []string{"--ca-sha256", fp, "proxy.test"}, nil, 2, "give the proxy as --proxy URL"},
		{"no proxy", "setup-docker.sh", []string{"--ca-sha256", fp}, nil, 2, "no proxy address"},
		{"https proxy", "setup-docker.sh", []string{"--proxy", "https://proxy.test", "--ca-sha256", fp}, nil, 2, "want http://HOST[:PORT]/"},
		{"proxy with a path", "setup-docker.sh", []string{"--proxy", "http://proxy.test:3128/x", "--ca-sha256", fp}, nil, 2, "want http://HOST[:PORT]/"},
		{"bad mirror", "setup-containerd.sh", append(slices.Clone(ok), "--mirror", "mirror.test:5000"), nil, 2, "--mirror mirror.test:5000: want"},
		{"bad registry", "setup-podman.sh", append(slices.Clone(ok), "--mirror", "http://m:5000", "--registries", "docker.io,bad/name"), nil, 2, "bad registry bad/name"},
		{"enroot mirror", "setup-enroot.sh", append(slices.Clone(ok), "--mirror", "http://m:5000"), nil, 2, "enroot has no --mirror mode"},
		{"root not a directory", "setup-docker.sh", append(slices.Clone(ok), "--root", "/nonexistent/root"), nil, 2, "not a directory"},
		{"bad no-proxy", "setup-docker.sh", append(slices.Clone(ok), "--no-proxy", "a b"), nil, 2, "--no-proxy a b"},
		{"daemon.json not an object", "setup-docker.sh", append(slices.Clone(ok), "--mirror", "https://m"),
			map[string]string{"etc/docker/daemon.json": `["registry-mirrors"]`}, 1, "cannot read it as one JSON object"},
		{"daemon.json cut short", "setup-docker.sh", append(slices.Clone(ok), "--mirror", "http://m:5000"),
			map[string]string{"etc/docker/daemon.json": `{"a": {"registry-mirrors": []}`}, 1, "cannot read it as one JSON object"},
		{"enroot proxy set elsewhere", "setup-enroot.sh", ok,
			map[string]string{"etc/enroot/enroot.conf": shippedEnrootConf + "https_proxy http://other:3128/\n"},
			1, "/etc/enroot/enroot.conf:13: https_proxy http://other:3128/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNodeRoot(t, tc.seed, "curl")
			before := n.tree(t)
			r := n.runFile(t, tc.script, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) || r.took > setupHelpTimeout {
				t.Errorf("want exit status %d within %v and stderr with %q; got %s", tc.code, setupHelpTimeout, tc.stderr, r)
			}
			if d := diffTrees(before, n.tree(t)); d != "" {
				t.Errorf("the root changed:\n%s", d)
			}
		})
	}
}

// TestSetupInsecure checks that --insecure-skip-fingerprint installs the
// CA it was given, saying so on stderr with the fingerprint.
func TestSetupInsecure(t *testing.T) {
	t.Parallel()
	n := newNodeRoot(t, nil)
	r := n.runFile(t, "setup-enroot.sh", "--proxy", "proxy.test", "--ca-file", setupCAFile, "--insecure-skip-fingerprint")
	want := "CA: ca_sha256=" + pemFingerprint(t, setupCAFile) + " from " + setupCAFile + ", NOT checked"
	if r.code != 0 || !strings.Contains(r.stderr, want) {
		t.Fatalf("want exit status 0 and %q on stderr; got %s", want, r)
	}
	caPEM, _ := os.ReadFile(setupCAFile)
	if got := n.read(t, "usr/local/share/ca-certificates/regproxy.crt"); got != string(caPEM) {
		t.Errorf("installed CA:\n%s\nwant:\n%s", got, caPEM)
	}
}

// TestSetupHelp checks that every script answers --help (and -h, wherever
// it stands) at once, with its usage and status 0, and touches nothing:
// not the network (curl is a stub that fails the test), not the root.
func TestSetupHelp(t *testing.T) {
	t.Parallel()
	for name, before := range map[string][]string{
		"setup-docker.sh":     {"--proxy", "proxy.test", "--dry-run"},
		"setup-containerd.sh": {"--mirror", "http://m:5000"},
		"setup-podman.sh":     {"--bogus"},
		"setup-enroot.sh":     {"--ca-sha256"},
		"gen-ca.sh":           {"--force"},
		"setup-node.sh":       {"--ca-sha256", "x"},
	} {
		for _, args := range [][]string{{"--help"}, append(before, "-h")} {
			t.Run(name+strings.Join(args, ""), func(t *testing.T) {
				t.Parallel()
				n := newNodeRoot(t, nil, "curl", "openssl")
				r := n.sh(t, nil, setupHelpTimeout, append([]string{scriptPath(t, name)}, args...)...)
				if r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: "+name) || r.stderr != "" {
					t.Errorf("want status 0, usage on stdout and nothing on stderr; got %s", r)
				}
				if len(n.tree(t)) != 0 {
					t.Error("--help wrote files")
				}
			})
		}
	}
}

// TestShellcheck keeps every script of scripts/ free of shellcheck
// findings, following what each sources (-x). The served scripts are
// checked in TestSetupServed. shellcheck comes with make test-deps.
func TestShellcheck(t *testing.T) {
	t.Parallel()
	path, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Fatal("shellcheck missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	scripts, err := filepath.Glob(filepath.Join("..", "..", "scripts", "*.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"setup-lib.sh", "setup-docker.sh", "setup-containerd.sh", "setup-podman.sh", "setup-enroot.sh", "gen-ca.sh", "setup-node.sh", "install-test-deps.sh"} {
		if !slices.Contains(scripts, filepath.Join("..", "..", "scripts", want)) {
			t.Errorf("scripts/%s missing from %q", want, scripts)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, path, append([]string{"-x"}, scripts...)...).CombinedOutput(); err != nil {
		t.Errorf("shellcheck -x %s: %v\n%s", strings.Join(scripts, " "), err, out)
	}
}

// shellcheckStdin runs shellcheck on a script given as text, as sh.
func shellcheckStdin(t *testing.T, script []byte) {
	t.Helper()
	path, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Fatal("shellcheck missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "-s", "sh", "-")
	cmd.Stdin = bytes.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("shellcheck: %v\n%s", err, out)
	}
}
