package main

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSystemdExample checks examples/systemd/regproxy.service: systemd-
// analyze verify must accept it without a word (it only warns of unknown
// or misspelt settings, so any output fails), pointed at a built binary
// since verify checks that ExecStart can run; systemd-analyze security
// must rate its exposure 2.0 or less; and the settings the README promises
// must be there, with ExecStart's flags all serve's.
func TestSystemdExample(t *testing.T) {
	t.Parallel()
	analyze := tool(t, "systemd-analyze", "systemd")
	src := filepath.Join(examplesDir, "systemd", "regproxy.service")
	unit := readUnit(t, src)
	start := strings.Fields(firstOr(unit["ExecStart"]))
	if len(start) < 2 || start[0] != "/usr/local/bin/regproxy" || start[1] != "serve" {
		t.Fatalf("ExecStart %q, want /usr/local/bin/regproxy serve ...", start)
	}
	checkServeArgs(t, "ExecStart", start[2:])
	if i := slices.Index(start, "--data-dir"); i < 0 || i+1 == len(start) || start[i+1] != "/var/lib/"+firstOr(unit["StateDirectory"]) {
		t.Errorf("ExecStart %q: --data-dir is not the StateDirectory %q", start, unit["StateDirectory"])
	}
	for key, want := range map[string]string{
		"DynamicUser": "yes", "StateDirectory": "regproxy", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
		"PrivateDevices": "yes", "RestrictNamespaces": "yes", "LockPersonality": "yes",
		// AF_NETLINK: the tunnel guard lists the host's addresses.
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_NETLINK AF_UNIX",
	} {
		if !slices.Equal(unit[key], []string{want}) {
			t.Errorf("%s=%q, want %q", key, unit[key], want)
		}
	}
	if d, err := time.ParseDuration(firstOr(unit["TimeoutStopSec"])); err != nil || d <= 30*time.Second {
		t.Errorf("TimeoutStopSec=%q, want more than the 30s --shutdown-grace", unit["TimeoutStopSec"])
	}

	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	copyUnit := filepath.Join(t.TempDir(), "regproxy.service")
	text := strings.ReplaceAll(string(b), "ExecStart=/usr/local/bin/regproxy ", "ExecStart="+binary+" ")
	if err := os.WriteFile(copyUnit, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "SYSTEMD_LOG_COLOR=0", "SYSTEMD_PAGER=cat"}
	if out, err := runTool(t, "", env, analyze, "verify", copyUnit); err != nil || out != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// --threshold counts tenths: 20 is an exposure of 2.0.
	if out, err := runTool(t, "", env, analyze, "security", "--offline=yes", "--threshold=20", copyUnit); err != nil {
		t.Errorf("systemd-analyze security: %v, want an exposure of 2.0 or less\n%s", err, out)
	}
}

// readUnit reads a unit file's [Service] settings: key → values, in
// order (a key may be set more than once).
func readUnit(t *testing.T, file string) map[string][]string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	settings := map[string][]string{}
	section := ""
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, _ := strings.Cut(line, "=")
			settings[k] = append(settings[k], v)
		}
	}
	return settings
}

// TestAnsibleExample checks examples/ansible/regproxy-nodes.yml with
// ansible-playbook: --syntax-check with the example inventory, then three
// runs against this machine (connection local) into a --root-style
// directory, with the setup scripts fetched from a live regproxy: --check
// --diff shows the changes and writes nothing; a run writes the docker
// and containerd drop-ins, the enroot drop-in and the CA, as served; a
// second run changes nothing. A wrong fingerprint fails and writes
// nothing.
func TestAnsibleExample(t *testing.T) {
	t.Parallel()
	playbook := tool(t, "ansible-playbook", "ansible-core")
	dir := filepath.Join(examplesDir, "ansible")
	home := t.TempDir()
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + home, "LC_ALL=C.UTF-8",
		"ANSIBLE_NOCOLOR=1", "ANSIBLE_LOCAL_TEMP=" + filepath.Join(home, "local"), "ANSIBLE_REMOTE_TEMP=" + filepath.Join(home, "remote"),
		"ANSIBLE_PYTHON_INTERPRETER=auto_silent", "ANSIBLE_RETRY_FILES_ENABLED=0",
	}
	if out, err := runTool(t, dir, env, playbook, "--syntax-check", "-i", "inventory.ini", "regproxy-nodes.yml"); err != nil {
		t.Fatalf("ansible-playbook --syntax-check: %v\n%s", err, out)
	}
	d := startDaemon(t)
	fp := loggedFingerprint(t, d)
	root := t.TempDir()
	play := func(sha256 string, extra ...string) (string, error) {
		args := append([]string{"-i", "localhost,", "-c", "local", "-e", "regproxy_hosts=localhost",
			"-e", "ansible_become=false", // this test runs as the user it writes as
			"-e", "regproxy=" + d.addr, "-e", "regproxy_ca_sha256=" + sha256, "-e", "regproxy_root=" + root,
			"regproxy-nodes.yml"}, extra...)
		return runTool(t, dir, env, playbook, args...)
	}

	out, err := play(fp, "--check", "--diff")
	if err != nil || !strings.Contains(out, "would write /etc/systemd/system/docker.service.d/http-proxy.conf") {
		t.Fatalf("--check --diff: %v, want the drop-in it would write\n%s", err, out)
	}
	wantEmpty(t, root, "--check")
	if out, err := play(strings.Repeat("0", 64)); err == nil || !strings.Contains(out, "does not match --ca-sha256") {
		t.Errorf("a wrong fingerprint: %v, want a failure naming it\n%s", err, out)
	}
	wantEmpty(t, root, "a wrong fingerprint")
	if out, err := play(fp); err != nil || !recap(out, "changed=1", "failed=0") {
		t.Fatalf("first run: %v, want changed=1 failed=0\n%s", err, out)
	}
	checkAnsibleTree(t, d, root)
	if out, err := play(fp); err != nil || !recap(out, "changed=0", "failed=0") {
		t.Errorf("second run: %v, want changed=0: nothing left to change\n%s", err, out)
	}

	// With a mirror, docker and containerd pull through it; enroot keeps
	// the proxy port.
	root = t.TempDir()
	if out, err := play(fp, "-e", "regproxy_mirror=http://regproxy-mirror.test:5000"); err != nil || !recap(out, "changed=1", "failed=0") {
		t.Fatalf("run with a mirror: %v, want changed=1 failed=0\n%s", err, out)
	}
	for file, want := range map[string]string{
		"etc/docker/daemon.json":                      `"registry-mirrors": ["http://regproxy-mirror.test:5000"]`,
		"etc/containerd/certs.d/docker.io/hosts.toml": `[host."http://regproxy-mirror.test:5000"]`,
		"etc/enroot/enroot.conf.d/regproxy.conf":      "https_proxy http://" + d.addr + "/",
	} {
		if b, err := os.ReadFile(filepath.Join(root, file)); err != nil || !strings.Contains(string(b), want) {
			t.Errorf("with a mirror, %s: %v; want it to hold %q:\n%s", file, err, want, b)
		}
	}
}

// loggedFingerprint is the ca_sha256 regproxy logged at start.
func loggedFingerprint(t *testing.T, d *daemon) string {
	t.Helper()
	for line := range strings.Lines(d.log.String()) {
		var e struct {
			Msg      string `json:"msg"`
			CASHA256 string `json:"ca_sha256"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.Msg == "regproxy serving" && e.CASHA256 != "" {
			return e.CASHA256
		}
	}
	t.Fatalf("no ca_sha256 in the log:\n%s", d.log)
	return ""
}

// recap reports whether the PLAY RECAP line has every one of want.
func recap(out string, want ...string) bool {
	m := regexp.MustCompile(`(?m)^localhost\s+:.*$`).FindString(out)
	for _, w := range want {
		if !strings.Contains(m, " "+w+" ") {
			return false
		}
	}
	return m != ""
}

// wantEmpty fails unless dir is empty.
func wantEmpty(t *testing.T, dir, after string) {
	t.Helper()
	if entries, err := os.ReadDir(dir); err != nil || len(entries) > 0 {
		t.Errorf("after %s, the root holds %v (%v), want nothing", after, entries, err)
	}
}

// checkAnsibleTree checks what the playbook wrote under root.
func checkAnsibleTree(t *testing.T, d *daemon, root string) {
	t.Helper()
	_, pem, err := d.get("/ca.crt")
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		"usr/local/share/ca-certificates/regproxy.crt":            string(pem),
		"etc/systemd/system/docker.service.d/http-proxy.conf":     `Environment="HTTPS_PROXY=http://` + d.addr + `/"`,
		"etc/systemd/system/containerd.service.d/http-proxy.conf": `Environment="HTTPS_PROXY=http://` + d.addr + `/"`,
		"etc/enroot/enroot.conf.d/regproxy.conf":                  "https_proxy http://" + d.addr + "/",
	} {
		b, err := os.ReadFile(filepath.Join(root, file))
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("%s: %v; want it to hold %q:\n%s", file, err, want, b)
		}
	}
}
