package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSetupRestart runs setup scripts as they run on a node, on / and as
// root, to check what they run there: update-ca-certificates when the CA
// changed, and a restart of the daemon only if something it reads at start
// changed, only if it is running, and never under --no-restart or
// --dry-run.
//
// The machine that runs the tests must not be changed, so the scripts run
// in a mount namespace of their own (unshare -m) in which /etc and
// /usr/local are overlays whose writes go to a tmpfs, and /run is a tmpfs
// holding /run/systemd/system, the sign that systemd runs. systemctl and
// update-ca-certificates are stubs that record their arguments;
// systemctl is-active answers as the step says.
func TestSetupRestart(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("TestSetupRestart needs root (mount namespaces): run the tests as root")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatal("unshare (util-linux) missing")
	}
	ca, err := filepath.Abs(setupCAFile)
	if err != nil {
		t.Fatal(err)
	}
	sha := pemFingerprint(t, setupCAFile)
	base := []string{"--proxy", "proxy.test", "--ca-file", ca, "--ca-sha256", sha}
	steps := []struct {
		name   string
		script string
		args   []string
		active bool     // what systemctl is-active answers
		calls  []string // the commands the script must run, in order
	}{
		{"first run", "setup-docker.sh", base, true, []string{
			"update-ca-certificates", "systemctl daemon-reload", "systemctl is-active --quiet docker.service", "systemctl restart docker.service"}},
		{"again", "setup-docker.sh", base, true, nil},
		{"dry run of a change", "setup-docker.sh", append(base, "--no-proxy", ".corp", "--dry-run"), true, nil},
		{"change, no restart", "setup-docker.sh", append(base, "--no-proxy", ".corp", "--no-restart"), true, []string{
			"systemctl daemon-reload"}},
		{"change, not running", "setup-docker.sh", base, false, []string{
			"systemctl daemon-reload", "systemctl is-active --quiet docker.service"}},
		{"containerd, CA in place", "setup-containerd.sh", base, true, []string{
			"systemctl daemon-reload", "systemctl is-active --quiet containerd.service", "systemctl restart containerd.service"}},
		{"containerd mirror, config.toml", "setup-containerd.sh", []string{"--mirror", "http://m:5000", "--registries", "quay.io"}, true, []string{
			"systemctl daemon-reload", "systemctl is-active --quiet containerd.service", "systemctl restart containerd.service"}},
		{"containerd mirror, hosts.toml only", "setup-containerd.sh", []string{"--mirror", "http://m:5000", "--registries", "docker.io"}, true, nil},
		{"podman", "setup-podman.sh", base, true, nil},
		{"enroot", "setup-enroot.sh", base, true, nil},
	}

	dir := t.TempDir()
	stubs := filepath.Join(dir, "stubs")
	if err := os.Mkdir(stubs, 0o755); err != nil {
		t.Fatal(err)
	}
	writeStub(t, stubs, "systemctl", "echo \"systemctl $*\" >>\"$CALLS\"\n[ \"$1\" != is-active ] || [ \"$ACTIVE\" = yes ]\n")
	writeStub(t, stubs, "update-ca-certificates", "echo update-ca-certificates >>\"$CALLS\"\n")
	writeStub(t, stubs, "update-ca-trust", "echo update-ca-trust \"$*\" >>\"$CALLS\"\n")

	var driver strings.Builder
	fmt.Fprintf(&driver, `set -eu
t=%[1]s/fs
mkdir "$t"
mount -t tmpfs tmpfs "$t"
for d in etc usr/local; do
	mkdir -p "$t/$d/upper" "$t/$d/work"
	mount -t overlay overlay -o "lowerdir=/$d,upperdir=$t/$d/upper,workdir=$t/$d/work" "/$d"
done
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
# Whatever the machine has, these start empty.
rm -rf /etc/systemd/system/docker.service.d /etc/systemd/system/containerd.service.d /etc/containerd \
	/etc/containers/containers.conf.d /etc/enroot/enroot.conf.d /etc/pki /usr/local/share/ca-certificates/regproxy.crt
export PATH=%[2]s:$PATH
`, shQuote(dir), shQuote(stubs))
	for i, s := range steps {
		active := "no"
		if s.active {
			active = "yes"
		}
		out := filepath.Join(dir, fmt.Sprint(i))
		fmt.Fprintf(&driver, "CALLS=%s.calls ACTIVE=%s sh %s", shQuote(out), active, shQuote(scriptPath(t, s.script)))
		for _, a := range s.args {
			driver.WriteString(" " + shQuote(a))
		}
		fmt.Fprintf(&driver, " >%s.out 2>&1 </dev/null && echo 0 >%[1]s.code || echo $? >%[1]s.code\n", shQuote(out))
	}
	cmd, cancel := timedCmd(t.Context(), time.Minute, unshare, "--mount", "--propagation", "private", "sh", "-c", driver.String())
	defer cancel()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("unshare: %v\n%s", err, out)
	}
	killLeftovers(t, "unshare", cmd)

	for i, s := range steps {
		read := func(ext string) string {
			b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprint(i)+ext))
			return string(b)
		}
		calls := strings.Split(strings.TrimSpace(read(".calls")), "\n")
		if calls[0] == "" {
			calls = nil
		}
		if code := strings.TrimSpace(read(".code")); code != "0" || strings.Join(calls, "\n") != strings.Join(s.calls, "\n") {
			t.Errorf("step %q: exit status %s, ran %q; want 0 and %q\noutput:\n%s", s.name, code, calls, s.calls, read(".out"))
		}
	}
}

func writeStub(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
}

// shQuote quotes s as one sh word.
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// TestSetupNeedsRoot runs a setup script on / as nobody: it must refuse
// to run, unless told --dry-run, which only prints.
func TestSetupNeedsRoot(t *testing.T) {
	t.Parallel()
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatal("setpriv (util-linux) missing")
	}
	args := []string{"--reuid=65534", "--regid=65534", "--clear-groups", "sh", scriptPath(t, "setup-docker.sh"),
		"--proxy", "proxy.test", "--ca-file", setupCAFile, "--ca-sha256", pemFingerprint(t, setupCAFile)}
	for _, tc := range []struct {
		dryRun bool
		code   int
		want   string
	}{
		{false, 1, "run as root (or with --dry-run, or --root DIR)"},
		{true, 0, "would write /etc/systemd/system/docker.service.d/http-proxy.conf:"},
	} {
		n := newNodeRoot(t, nil)
		a := args
		if tc.dryRun {
			a = append(a, "--dry-run")
		}
		r := n.sh(t, nil, setupTimeout, append([]string{"-c", `exec "$@"`, "sh", setpriv}, a...)...)
		if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.want) {
			t.Errorf("--dry-run %v: want exit status %d and %q; got %s", tc.dryRun, tc.code, tc.want, r)
		}
	}
}
