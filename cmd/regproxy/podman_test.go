package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Bounds of one podman run.
const (
	podmanPullTimeout = 3 * time.Minute
	podmanTimeout     = 30 * time.Second
)

// TestPodmanPull pulls a single-platform image and a multi-arch index with
// rootful podman, which pulls in its own process (no daemon) through
// HTTPS_PROXY. After its image store is emptied, a second pull must be
// served from regproxy's cache: no blob and no manifest GET upstream, and
// a HIT for every digest the first pull missed. Last, the store is emptied
// once more and both images are pulled during a registry outage, past
// --manifest-ttl.
func TestPodmanPull(t *testing.T) {
	t.Parallel()
	s := newHubSetup(t, outageFlags...)
	p := newPodman(t, s)

	p.pullAll(t, s)
	before, manifests := s.BlobFetches(), s.up.Count("GET manifest")
	p.clear(t)
	missed, skip := loggedMisses(s), s.d.lines()
	p.pullAll(t, s)
	// The second pull may have revalidated tags, which writes their
	// records again.
	expires := time.Now().Add(outageTTL)
	s.AssertNoBlobFetchesSince(t, before, "podman second pull")
	assertHitsSince(t, s, skip, missed, "podman second pull")
	if got := s.up.Count("GET manifest") - manifests; got != 0 {
		t.Errorf("podman second pull: %d manifest GETs upstream; want none (a tag past --manifest-ttl is revalidated with a HEAD)", got)
	}

	p.clear(t)
	o := s.beginOutage(t, expires)
	p.pullAll(t, s)
	s.AssertPulledDuringOutage(t, o, "podman pull during the outage", true, s.Image, s.Index)
}

// podman runs podman in a sealed world under dir: its own storage (vfs,
// which needs no kernel support), run and tmp dirs, containers.conf,
// storage.conf and registries.conf, an accept-anything signature policy,
// no credentials, and TLS roots that hold only regproxy's CA.
type podman struct {
	path, dir string
	global    []string // flags before the subcommand
	env       []string
}

// newPodman fails, never skips, when podman is missing.
func newPodman(t *testing.T, s *hubSetup) *podman {
	t.Helper()
	path, err := exec.LookPath("podman")
	if err != nil {
		t.Fatal("podman missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	// Short, like containerd's: podman's run dir may hold sockets.
	dir, err := os.MkdirTemp("/tmp", "podman-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &podman{path: path, dir: dir}
	for _, sub := range []string{"root", "run", "tmp", "home", "certs", "networks", "volumes"} {
		if err := os.Mkdir(p.sub(sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	p.write(t, "registries.conf", "") // no search registries, mirrors or blocks
	// Podman, unlike skopeo, refuses an auth file that does not exist.
	p.write(t, "auth.json", `{"auths":{}}`)
	p.write(t, "policy.json", `{"default":[{"type":"insecureAcceptAnything"}]}`)
	// File locks live in the tmp dir; the default, shm, is one segment,
	// /dev/shm/libpod_lock, shared by every rootful podman on the host.
	p.write(t, "containers.conf", `[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
`)
	p.write(t, "storage.conf", `[storage]
driver = "vfs"
graphroot = "`+p.sub("root")+`"
runroot = "`+p.sub("run")+`"
`)
	p.global = []string{
		"--root", p.sub("root"), "--runroot", p.sub("run"), "--storage-driver", "vfs",
		"--tmpdir", p.sub("tmp"), "--volumepath", p.sub("volumes"), "--network-config-dir", p.sub("networks"),
		"--cgroup-manager", "cgroupfs", "--events-backend", "file",
	}
	p.env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + p.sub("home"),
		"TMPDIR=" + p.sub("tmp"), // where pulls stage blobs (else /var/tmp)
		"CONTAINERS_CONF=" + p.sub("containers.conf"),
		"CONTAINERS_STORAGE_CONF=" + p.sub("storage.conf"),
		"CONTAINERS_REGISTRIES_CONF=" + p.sub("registries.conf"),
		"REGISTRY_AUTH_FILE=" + p.sub("auth.json"), // empty: anonymous
		"SSL_CERT_DIR=" + p.sub("certs"),           // empty: no system roots
	}, s.ProxyEnv()...)
	return p
}

func (p *podman) sub(name string) string { return filepath.Join(p.dir, name) }

func (p *podman) write(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(p.sub(name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// run runs podman with the global flags and returns its stdout. Podman
// forks no daemon for these commands; anything left in its process group
// after it exits is killed all the same.
func (p *podman) run(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	cmd, cancel := timedCmd(t.Context(), timeout, p.path, slices.Concat(p.global, args)...)
	defer cancel()
	cmd.Env = p.env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	killLeftovers(t, "podman "+args[0], cmd)
	if err != nil {
		t.Fatalf("podman %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// pullAll pulls both images for linux/amd64 and checks what podman
// recorded for each. For the index, podman 4.3's .Digest is the manifest
// list's digest, the one the tag resolved to, not that of the amd64 image
// it chose: containers/image stores both manifests, and .RepoDigests names
// both.
func (p *podman) pullAll(t *testing.T, s *hubSetup) {
	t.Helper()
	for _, img := range []hubImage{s.Image, s.Index} {
		ref := img.Ref(s)
		// --cert-dir replaces /etc/containers/certs.d and /etc/docker/certs.d,
		// which could add roots of the host.
		p.run(t, podmanPullTimeout, "pull", "--tls-verify=true", "--cert-dir", p.sub("certs"),
			"--signature-policy", p.sub("policy.json"), "--platform", "linux/amd64", ref)
		got := strings.TrimSpace(p.run(t, podmanTimeout, "image", "inspect",
			"--format", "{{.Digest}} {{.Os}}/{{.Architecture}}", ref))
		if want := img.Digest + " linux/amd64"; got != want {
			t.Errorf("podman image inspect %s: %q, want %q", ref, got, want)
		}
	}
}

// clear removes every image and checks that neither an image nor a layer
// is left: a layer podman still had would not be downloaded again.
func (p *podman) clear(t *testing.T) {
	t.Helper()
	p.run(t, podmanTimeout, "rmi", "--all", "--force")
	if out := p.run(t, podmanTimeout, "images", "--all", "--quiet"); strings.TrimSpace(out) != "" {
		t.Fatalf("after podman rmi --all --force, podman images lists:\n%s", out)
	}
	layers, err := os.ReadDir(filepath.Join(p.sub("root"), "vfs", "dir")) // one directory per layer
	if err != nil || len(layers) > 0 {
		t.Fatalf("after podman rmi --all --force, vfs holds %d layers (%v); want 0", len(layers), err)
	}
}
