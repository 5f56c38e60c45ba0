package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSetupPodman pulls with a real podman configured from what
// setup-podman.sh writes: its containers.conf.d drop-in, which puts
// HTTPS_PROXY into podman's own environment ([engine] env), is podman's
// containers.conf, with only the test's isolation settings added, and the
// CA it installed is podman's one root. Nothing else tells podman of the
// proxy. The second pull, after podman's store is emptied, must fetch no
// blob upstream.
func TestSetupPodman(t *testing.T) {
	t.Parallel()
	s := newHubSetup(t)
	n := newNodeRoot(t, nil)
	if r := n.runFile(t, "setup-podman.sh", "--proxy", s.ProxyURL(), "--ca-sha256", pemFingerprint(t, s.caFile)); r.code != 0 {
		t.Fatalf("setup-podman.sh: %s", r)
	}
	p := newPodman(t, s)
	// The harness's isolation (file locks and events, cgroupfs) goes into
	// the script's [engine] table.
	conf := n.read(t, "etc/containers/containers.conf.d/regproxy.conf")
	if !strings.Contains(conf, "\n[engine]\n") {
		t.Fatalf("the drop-in has no [engine] table:\n%s", conf)
	}
	conf = strings.Replace(conf, "\n[engine]\n", "\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nlock_type = \"file\"\n", 1)
	p.write(t, "containers.conf", conf)
	var env []string
	for _, kv := range p.env {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE":
		default:
			env = append(env, kv)
		}
	}
	p.env = append(env, "SSL_CERT_FILE="+filepath.Join(n.dir, "usr/local/share/ca-certificates/regproxy.crt"))

	p.pullAll(t, s)
	before := s.BlobFetches()
	if before == 0 {
		t.Fatal("first pull: no blob fetches upstream; the second pull would prove nothing")
	}
	p.clear(t)
	p.pullAll(t, s)
	s.AssertNoBlobFetchesSince(t, before, "podman second pull, set up by setup-podman.sh")
}

// TestSetupPodmanMirror has podman read the registries.conf drop-in that
// setup-podman.sh --mirror writes, and checks that it finds the mirror,
// with the registry as a path prefix, for each registry.
func TestSetupPodmanMirror(t *testing.T) {
	t.Parallel()
	n := newNodeRoot(t, nil)
	if r := n.runFile(t, "setup-podman.sh", "--mirror", "http://mirror.test:5000", "--registries", "docker.io quay.io"); r.code != 0 {
		t.Fatalf("setup-podman.sh: %s", r)
	}
	path, err := exec.LookPath("podman")
	if err != nil {
		t.Fatal("podman missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "containers.conf")
	if err := os.WriteFile(conf, []byte("[engine]\nlock_type = \"file\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, cancel := timedCmd(t.Context(), podmanTimeout, path, "--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run"),
		"--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file", "info", "--format", "{{json .Registries}}")
	defer cancel()
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
		"CONTAINERS_CONF=" + conf, "TMPDIR=" + dir,
		"CONTAINERS_REGISTRIES_CONF=" + filepath.Join(n.dir, "etc/containers/registries.conf.d/regproxy.conf")}
	out, err := cmd.Output()
	killLeftovers(t, "podman info", cmd)
	if err != nil {
		t.Fatalf("podman info: %v\n%s", err, out)
	}
	var regs map[string]struct {
		Location string
		Mirrors  []struct {
			Location string
			Insecure bool
		}
	}
	if err := json.Unmarshal(out, &regs); err != nil {
		t.Fatalf("podman info .Registries: %v in %s", err, out)
	}
	for _, reg := range []string{"docker.io", "quay.io"} {
		r := regs[reg]
		if r.Location != reg || len(r.Mirrors) != 1 || r.Mirrors[0].Location != "mirror.test:5000/"+reg || !r.Mirrors[0].Insecure {
			t.Errorf("podman sees registry %s as %+v, want location %s and the one insecure mirror mirror.test:5000/%s", reg, r, reg, reg)
		}
	}
}

// TestSetupContainerdConfig has containerd read the config.toml that
// setup-containerd.sh --mirror leaves, made from Debian's or from none:
// containerd must accept it and set CRI's config_path.
func TestSetupContainerdConfig(t *testing.T) {
	t.Parallel()
	path, err := exec.LookPath("containerd")
	if err != nil {
		t.Fatal("containerd missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	for name, seed := range map[string]map[string]string{
		"debian": {"etc/containerd/config.toml": debianContainerdConfig},
		"none":   nil,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			n := newNodeRoot(t, seed)
			if r := n.runFile(t, "setup-containerd.sh", "--mirror", "http://mirror.test:5000", "--registries", "docker.io"); r.code != 0 {
				t.Fatalf("setup-containerd.sh: %s", r)
			}
			cmd, cancel := timedCmd(t.Context(), 30*time.Second, path, "--config", filepath.Join(n.dir, "etc/containerd/config.toml"), "config", "dump")
			defer cancel()
			out, err := cmd.CombinedOutput()
			killLeftovers(t, "containerd config dump", cmd)
			if err != nil {
				t.Fatalf("containerd config dump: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), `config_path = "/etc/containerd/certs.d"`) {
				t.Errorf("containerd config dump has no config_path = \"/etc/containerd/certs.d\":\n%s", out)
			}
		})
	}
}
