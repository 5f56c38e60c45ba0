package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Bounds of the containerd test's waits.
const (
	ctrPullTimeout  = 3 * time.Minute  // one ctr images pull
	ctrTimeout      = 30 * time.Second // any other ctr command
	ctrStartTimeout = 30 * time.Second // containerd answering on its socket
)

// ctrNamespace is the containerd namespace the test's images live in. The
// daemon is private to the test, so the name needs to be unique only
// against containerd's own ("default", "moby", "k8s.io").
const ctrNamespace = "regproxy-e2e"

// TestContainerdPull pulls a single-platform image and a multi-arch index
// with containerd 1.6's ctr, which resolves and fetches in the client
// process, so HTTPS_PROXY and regproxy's CA go into ctr's environment, not
// the daemon's. After the content store and snapshots are emptied, a
// second pull must be served from regproxy's cache: no blob and no
// manifest GET upstream, and a HIT for every digest the first pull missed.
// Last, the store is emptied once more and both images are pulled during a
// registry outage, past --manifest-ttl. ctr never pings /v2/ (containerd's
// resolver starts with the HEAD of the tag), so it needs no OFFLINE ping:
// this pull would succeed without it.
func TestContainerdPull(t *testing.T) {
	t.Parallel()
	c := startContainerd(t)
	s := newHubSetup(t, outageFlags...)
	images := []hubImage{s.Image, s.Index}

	c.pullAll(t, s, images)
	before, manifests := s.BlobFetches(), s.up.Count("GET manifest")
	c.clear(t, s, images)
	missed, skip := loggedMisses(s), s.d.lines()
	c.pullAll(t, s, images)
	// The second pull may have revalidated tags, which writes their
	// records again.
	expires := time.Now().Add(outageTTL)
	s.AssertNoBlobFetchesSince(t, before, "containerd second pull")
	assertHitsSince(t, s, skip, missed, "containerd second pull")
	if got := s.up.Count("GET manifest") - manifests; got != 0 {
		t.Errorf("containerd second pull: %d manifest GETs upstream; want none (a tag past --manifest-ttl is revalidated with a HEAD)", got)
	}

	c.clear(t, s, images)
	o := s.beginOutage(t, expires)
	c.pullAll(t, s, images)
	s.AssertPulledDuringOutage(t, o, "containerd pull during the outage", false, images...)
}

// containerd is a private containerd daemon: its own root, state and
// sockets under dir, no CRI, and only the native snapshotter, which needs
// no kernel support and so works in any sandbox.
type containerd struct {
	ctr, dir, sock string
	log            *syncBuffer // the daemon's stdout and stderr
	proc           proc        // the daemon, in a process group of its own
	exited         chan struct{}
	err            error // Wait's result; read after exited is closed
}

// startContainerd starts the daemon and waits until ctr can reach it. It
// is stopped by its process group when the test ends.
func startContainerd(t *testing.T) *containerd {
	t.Helper()
	bin, err := exec.LookPath("containerd")
	if err != nil {
		t.Fatal("containerd missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	c := &containerd{log: &syncBuffer{}, exited: make(chan struct{})}
	if c.ctr, err = exec.LookPath("ctr"); err != nil {
		t.Fatal("ctr missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	// Unix socket paths must fit in 108 bytes; t.TempDir's may not.
	if c.dir, err = os.MkdirTemp("/tmp", "ctrd-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(c.dir) }) // runs after stop: cleanups are LIFO
	c.sock = filepath.Join(c.dir, "c.sock")
	config := filepath.Join(c.dir, "config.toml")
	if err := os.WriteFile(config, []byte(c.config()), 0o644); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin, "--config", config)
	cmd.Stdout, cmd.Stderr = c.log, c.log
	c.proc = startProc(t, "containerd", cmd, true, c.exited, &c.err)
	t.Cleanup(func() { c.stop(t) })
	c.waitReady(t)
	return c
}

// config is containerd's config.toml. The disabled plugins are either
// unused here (CRI, which wants CNI; opt, which would write /opt/containerd)
// or snapshotters that need kernel features or filesystems a sandbox may
// lack.
func (c *containerd) config() string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = %q

[ttrpc]
  address = %q
`, filepath.Join(c.dir, "root"), filepath.Join(c.dir, "state"), c.sock, filepath.Join(c.dir, "t.sock"))
}

// waitReady polls ctr version until the daemon answers.
func (c *containerd) waitReady(t *testing.T) {
	t.Helper()
	c.proc.waitReady(t, ctrStartTimeout, pollInterval, func(ctx context.Context) error {
		out, err := c.run(ctx, ctrTimeout, nil, "version")
		if err != nil {
			return fmt.Errorf("ctr version: %w\n%s", err, out)
		}
		return nil
	})
}

// stop sends the daemon's process group SIGTERM, then SIGKILL if it has not
// exited within stopTimeout.
func (c *containerd) stop(t *testing.T) {
	c.proc.stop(t, stopTimeout)
	if t.Failed() {
		t.Logf("containerd log:\n%s", c.log)
	}
}

// run runs ctr against the daemon in ctrNamespace, with env added to a
// bare PATH, under ctx and timeout, and returns its combined output.
func (c *containerd) run(ctx context.Context, timeout time.Duration, env []string, args ...string) (string, error) {
	cmd, cancel := timedCmd(ctx, timeout, c.ctr, append([]string{"--address", c.sock, "--namespace", ctrNamespace}, args...)...)
	defer cancel()
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + c.dir}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustRun is run with a timeout that fails the test on any error.
func (c *containerd) mustRun(t *testing.T, timeout time.Duration, env []string, args ...string) string {
	t.Helper()
	out, err := c.run(t.Context(), timeout, env, args...)
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// pullAll pulls each image for linux/amd64 through regproxy and checks
// what containerd recorded: the pulled reference's digest (an index keeps
// its own digest, not its amd64 entry's), all content present, unpacked.
func (c *containerd) pullAll(t *testing.T, s *hubSetup, images []hubImage) {
	t.Helper()
	for _, img := range images {
		ref := img.Ref(s)
		c.mustRun(t, ctrPullTimeout, s.ProxyEnv(), "images", "pull",
			"--snapshotter", "native", "--platform", "linux/amd64", "--tlscacert", s.caFile, ref)
		got := c.check(t, ref)
		if got.digest != img.Digest || !got.complete || !got.unpacked {
			t.Errorf("ctr images check %s: digest %s, complete %v, unpacked %v; want %s, complete and unpacked\n%s",
				ref, got.digest, got.complete, got.unpacked, img.Digest, got.line)
		}
	}
}

// ctrImage is one row of ctr images check.
type ctrImage struct {
	line               string
	digest             string
	complete, unpacked bool
}

// check runs ctr images check for ref. Its columns are REF TYPE DIGEST
// STATUS SIZE UNPACKED, where STATUS is "complete (N/N)" and SIZE
// "X.Y KiB/X.Y KiB", so fields are counted from both ends.
func (c *containerd) check(t *testing.T, ref string) ctrImage {
	t.Helper()
	out := c.mustRun(t, ctrTimeout, nil, "images", "check", "--snapshotter", "native", "name=="+ref)
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != ref {
			continue
		}
		return ctrImage{line: line, digest: f[2], complete: f[3] == "complete", unpacked: f[len(f)-1] == "true"}
	}
	t.Fatalf("ctr images check: no row for %s:\n%s", ref, out)
	return ctrImage{}
}

// clear removes the images and, with --sync, waits for the garbage
// collector, then checks that no blob, snapshot or lease is left, in the
// metadata and on disk: any survivor would let the second pull skip the
// proxy.
func (c *containerd) clear(t *testing.T, s *hubSetup, images []hubImage) {
	t.Helper()
	args := []string{"images", "rm", "--sync"}
	for _, img := range images {
		args = append(args, img.Ref(s))
	}
	c.mustRun(t, ctrTimeout, nil, args...)
	for _, list := range []struct {
		args   []string
		header bool // the first line is column names
	}{
		{[]string{"content", "ls", "-q"}, false},
		{[]string{"snapshots", "--snapshotter", "native", "ls"}, true},
		{[]string{"leases", "ls", "-q"}, false},
		{[]string{"images", "ls", "-q"}, false},
	} {
		out := c.mustRun(t, ctrTimeout, nil, list.args...)
		if len(ctrRows(out, list.header)) > 0 {
			t.Fatalf("after ctr images rm --sync, ctr %s still lists:\n%s", strings.Join(list.args, " "), out)
		}
	}
	// The content store's files, shared by all namespaces.
	blobs, err := os.ReadDir(filepath.Join(c.dir, "root", "io.containerd.content.v1.content", "blobs", "sha256"))
	if err != nil || len(blobs) > 0 {
		t.Fatalf("after ctr images rm --sync, the content store holds %d blobs (%v); want 0", len(blobs), err)
	}
}

// ctrRows returns the non-empty lines of out, less the first if header.
func ctrRows(out string, header bool) []string {
	var rows []string
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line != "" && !(header && i == 0) {
			rows = append(rows, line)
		}
	}
	return rows
}

// loggedMisses returns the digests (blobs and manifests by digest) that
// regproxy's access log shows it fetched upstream so far.
func loggedMisses(s *hubSetup) []string {
	var missed []string
	for _, e := range s.d.entries(0) {
		if strings.HasPrefix(e.Ref, "sha256:") && strings.HasPrefix(e.Outcome, "MISS") && !slices.Contains(missed, e.Ref) {
			missed = append(missed, e.Ref)
		}
	}
	return missed
}

// assertHitsSince checks that every digest the first pull missed was asked
// for again after log line skip and served from the cache. Without it, a
// client whose local store was not really emptied would download nothing
// and pass AssertNoBlobFetchesSince all the same.
func assertHitsSince(t *testing.T, s *hubSetup, skip int, missed []string, what string) {
	t.Helper()
	if len(missed) == 0 {
		t.Errorf("%s: the first pull logged no MISS; nothing shows it went upstream", what)
	}
	// Access-log lines are written after the response, so they may trail
	// the client's exit: poll for all of them at once.
	missing := slices.Clone(missed)
	for range pollTries {
		missing = slices.DeleteFunc(missing, func(d string) bool {
			return s.d.logged(skip, func(e logEntry) bool { return e.Ref == d && e.Outcome == "HIT" })
		})
		if len(missing) == 0 {
			return
		}
		time.Sleep(pollInterval)
	}
	for _, d := range missing {
		t.Errorf(`%s: no "outcome":"HIT" line for %s, which the first pull fetched`, what, d)
	}
}
