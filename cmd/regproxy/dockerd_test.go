package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Bounds of the dockerd test's waits.
const (
	dockerdStartTimeout = 60 * time.Second // until `docker version` answers
	dockerdStopTimeout  = 20 * time.Second // from SIGTERM to exit
	dockerPullTimeout   = 3 * time.Minute  // one `docker pull`
	dockerCmdTimeout    = 30 * time.Second // any other docker command
)

// dockerdTTL is the --manifest-ttl of the dockerd test. Its second pull,
// some 0.4 s after the first on a quiet machine, must find every tag
// record fresh (it asserts that no manifest request goes upstream, not
// even a HEAD), and its pull during the outage waits it out. 2 s was too
// short on a loaded 2-core machine, where the removal and the second pull
// took longer and revalidated the records; 8 s leaves a wide margin at
// the cost of a few seconds' wait before the outage.
const dockerdTTL = 8 * time.Second

// TestDockerdPull pulls an image and a multi-arch index with a real dockerd
// whose only proxy settings are those of a systemd drop-in. Then it empties
// dockerd's store and pulls both again: the second pull must be served by
// regproxy's cache, which the upstream's blob and manifest counters prove
// (dockerd HEADs each tag, then GETs by digest). Last, it empties the store
// once more and pulls both during a registry outage, past --manifest-ttl.
func TestDockerdPull(t *testing.T) {
	t.Parallel()
	bin, cli := lookDocker(t)
	s := newHubSetup(t, "--manifest-ttl", dockerdTTL.String())
	dk := startDockerd(t, bin, cli, s.ProxyEnv())
	images := []hubImage{s.Image, s.Index}

	for _, img := range images {
		dk.pull(t, s, img)
	}
	expires := time.Now().Add(dockerdTTL) // the second pull asks upstream nothing
	before, manifests := s.BlobFetches(), s.ManifestRequests()
	if before == 0 {
		t.Fatal("first pull: no blob fetches upstream; the second pull would prove nothing")
	}
	dk.removeAll(t, s, images)

	skip := s.d.lines()
	for _, img := range images {
		if out := dk.pull(t, s, img); strings.Contains(out, "Already exists") {
			t.Errorf("second pull of %s reused local layers after removeAll:\n%s", img.Ref(s), out)
		}
	}
	s.AssertNoBlobFetchesSince(t, before, "dockerd second pull")
	s.AssertNoManifestRequestsSince(t, manifests, "dockerd second pull")
	if !s.d.waitLogged(skip, func(e logEntry) bool {
		return e.Method == "GET" && e.Outcome == "HIT" && strings.HasPrefix(e.Ref, "sha256:")
	}) {
		t.Error(`dockerd second pull: no "outcome":"HIT" GET by digest in regproxy's log`)
	}

	dk.removeAll(t, s, images)
	o := s.beginOutage(t, expires)
	for _, img := range images {
		if out := dk.pull(t, s, img); strings.Contains(out, "Already exists") {
			t.Errorf("pull of %s during the outage reused local layers after removeAll:\n%s", img.Ref(s), out)
		}
	}
	s.AssertPulledDuringOutage(t, o, "dockerd pull during the outage", true, images...)
}

// dockerd is a private docker daemon: its own data root, exec root,
// socket, managed containerd and key, none shared with a system dockerd.
type dockerd struct {
	dir     string // short (unix socket paths are limited to 108 bytes)
	host    string // "unix://DIR/docker.sock", the CLI's -H
	cli     string // the docker CLI
	cliEnv  []string
	logFile string // dockerd's and its containerd's stdout and stderr
	config  string // a daemon.json whose settings dockerd gets too; "" for none
	proc    proc   // dockerd, leading a process group of its own
	exited  chan struct{}
	err     error // Wait's result; read after exited is closed
}

// startDockerd starts the dockerd at bin with env (PATH is added) and
// waits until the docker CLI at cli gets an answer. It is stopped when the
// test ends, failed or not.
func startDockerd(t *testing.T, bin, cli string, env []string) *dockerd {
	t.Helper()
	return startDockerdConfig(t, bin, cli, env, "")
}

// startDockerdConfig is startDockerd with the settings of config, a
// daemon.json ("" for none), added to the test's own.
func startDockerdConfig(t *testing.T, bin, cli string, env []string, config string) *dockerd {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "dkr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove dockerd's dir: %v", err)
		}
	})
	dk := &dockerd{
		dir: dir, host: "unix://" + filepath.Join(dir, "docker.sock"), cli: cli,
		cliEnv: []string{
			"PATH=" + os.Getenv("PATH"),
			"HOME=" + dir,
			"DOCKER_CONFIG=" + filepath.Join(dir, "cli"), // absent: no credentials, no helpers
		},
		logFile: filepath.Join(dir, "dockerd.log"),
		exited:  make(chan struct{}),
		config:  config,
	}
	cmd := exec.Command(bin, dk.args(t)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	log, err := os.Create(dk.logFile)
	if err != nil {
		t.Fatal(err)
	}
	// A file, not a pipe: the managed containerd inherits it, and a pipe
	// would keep Wait waiting for containerd too.
	cmd.Stdout, cmd.Stderr = log, log
	defer log.Close() // cmd has its own copy once started
	dk.proc = startProc(t, "dockerd", cmd, true, dk.exited, &dk.err)
	t.Cleanup(func() { dk.stop(t) })
	dk.waitReady(t)
	return dk
}

// lookDocker fails, never skips, when dockerd or the CLI is missing or
// dockerd cannot run: a skipped end-to-end test is a silent pass.
func lookDocker(t *testing.T) (bin, cli string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("dockerd needs root: run the tests as root")
	}
	bin, err := exec.LookPath("dockerd")
	if err != nil {
		t.Fatal("dockerd missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	cli, err = exec.LookPath("docker")
	if err != nil {
		t.Fatal("docker CLI missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	return bin, cli
}

// args are the flags of a systemd unit, plus isolation: a config file
// (dk.config's settings, if any, and one) that keeps the trust key out of
// /etc/docker, and containerd namespaces of its own. Without --containerd,
// dockerd starts its own containerd under exec-root.
func (dk *dockerd) args(t *testing.T) []string {
	t.Helper()
	config := filepath.Join(dk.dir, "daemon.json")
	settings := map[string]any{}
	if dk.config != "" {
		b, err := os.ReadFile(dk.config)
		if err == nil {
			err = json.Unmarshal(b, &settings)
		}
		if err != nil {
			t.Fatalf("daemon.json %s: %v", dk.config, err)
		}
	}
	settings["deprecated-key-path"] = filepath.Join(dk.dir, "key.json")
	b, err := json.Marshal(settings)
	if err == nil {
		err = os.WriteFile(config, b, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
	ns := "regproxy-" + filepath.Base(dk.dir)
	return []string{
		"--config-file", config,
		"--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
		"--data-root", filepath.Join(dk.dir, "data"), "--exec-root", filepath.Join(dk.dir, "exec"),
		"--pidfile", filepath.Join(dk.dir, "docker.pid"), "-H", dk.host,
		"--containerd-namespace", ns, "--containerd-plugins-namespace", ns + "-plugins",
	}
}

// waitReady polls `docker version` until the daemon answers.
func (dk *dockerd) waitReady(t *testing.T) {
	t.Helper()
	dk.proc.waitReady(t, dockerdStartTimeout, 200*time.Millisecond, func(ctx context.Context) error {
		_, err := dk.docker(ctx, 5*time.Second, "version")
		return err
	})
}

// docker runs the CLI against this daemon and returns its stdout; the
// error carries stderr.
func (dk *dockerd) docker(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	cmd, cancel := timedCmd(ctx, timeout, dk.cli, append([]string{"-H", dk.host}, args...)...)
	defer cancel()
	cmd.Env = dk.cliEnv
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("docker %s: %w\n%s%s", strings.Join(args, " "), err, &stdout, &stderr)
	}
	return stdout.String(), nil
}

// pull pulls img, checks the digest dockerd reports and records, and
// returns the pull's output.
func (dk *dockerd) pull(t *testing.T, s *hubSetup, img hubImage) string {
	t.Helper()
	return dk.pullRef(t, img.Ref(s), s.up.Host+"/"+img.Repo+"@"+img.Digest, img.Digest)
}

// pullRef pulls ref, checks that dockerd reports digest and records
// repoDigest among the image's RepoDigests, and returns the pull's output.
func (dk *dockerd) pullRef(t *testing.T, ref, repoDigest, digest string) string {
	t.Helper()
	out, err := dk.docker(t.Context(), dockerPullTimeout, "pull", ref)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Digest: "+digest) {
		t.Errorf("docker pull %s: no %q line in its output:\n%s", ref, "Digest: "+digest, out)
	}
	js, err := dk.docker(t.Context(), dockerCmdTimeout, "image", "inspect", "--format", "{{json .RepoDigests}}", ref)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := json.Unmarshal([]byte(js), &got); err != nil {
		t.Fatalf("RepoDigests of %s: %v in %q", ref, err, js)
	}
	if !slices.Contains(got, repoDigest) {
		t.Errorf("RepoDigests of %s = %q, want %q", ref, got, repoDigest)
	}
	return out
}

// removeAll removes images and anything else in dockerd's image store,
// and checks that the store is empty.
func (dk *dockerd) removeAll(t *testing.T, s *hubSetup, images []hubImage) {
	t.Helper()
	refs := make([]string, 0, len(images))
	for _, img := range images {
		refs = append(refs, img.Ref(s))
	}
	dk.removeRefs(t, refs)
}

// removeRefs removes the images named refs and anything else in dockerd's
// image store, and checks that the store is empty.
func (dk *dockerd) removeRefs(t *testing.T, refs []string) {
	t.Helper()
	rmi := append([]string{"rmi", "-f"}, refs...)
	for _, args := range [][]string{rmi, {"image", "prune", "-af"}} {
		if _, err := dk.docker(t.Context(), dockerCmdTimeout, args...); err != nil {
			t.Fatal(err)
		}
	}
	out, err := dk.docker(t.Context(), dockerCmdTimeout, "images", "-aq")
	if err != nil {
		t.Fatal(err)
	}
	if ids := strings.TrimSpace(out); ids != "" {
		t.Fatalf("docker images -aq after rmi and prune: %q, want none", ids)
	}
}

// stop sends SIGTERM to dockerd's process group and SIGKILL if it has not
// exited within dockerdStopTimeout. Then it makes sure that the containerd
// dockerd started (in a session of its own) is gone and that nothing is
// left mounted under dk.dir, and prints dockerd's log if the test failed.
func (dk *dockerd) stop(t *testing.T) {
	containerd := dk.containerdPID()
	if dk.proc.stop(t, dockerdStopTimeout) && dk.err != nil {
		t.Logf("dockerd after SIGTERM: %v", dk.err)
	}
	dk.proc.signal(syscall.SIGKILL) // stragglers; ESRCH when none
	if containerd != 0 {
		dk.reap(t, containerd)
	}
	dk.unmountAll(t)
	if t.Failed() {
		b, _ := os.ReadFile(dk.logFile)
		t.Logf("dockerd log (grpc lines left out):\n%s", withoutGRPC(b))
	}
}

// containerdPID reads the pid file dockerd writes for its containerd, or
// returns 0.
func (dk *dockerd) containerdPID() int {
	b, err := os.ReadFile(filepath.Join(dk.dir, "exec", "containerd", "containerd.pid"))
	if err != nil {
		return 0
	}
	var pid int
	fmt.Sscan(string(b), &pid)
	return pid
}

// reap waits for dockerd's containerd to exit, and kills it if it does
// not. A process counts as gone once its command line is: zombies, which
// init reaps, have none, and a reused PID runs another command.
func (dk *dockerd) reap(t *testing.T, pid int) {
	alive := func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		return bytes.Contains(b, []byte(filepath.Join(dk.dir, "exec", "containerd")))
	}
	for range 50 {
		if !alive() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("dockerd's containerd (pid %d) still running after dockerd stopped; killing it", pid)
	syscall.Kill(pid, syscall.SIGKILL)
}

// unmountAll unmounts, deepest first, whatever dockerd left mounted under
// dk.dir. vfs mounts nothing, so a mount here is a leak worth reporting.
func (dk *dockerd) unmountAll(t *testing.T) {
	mounts, err := mountsUnder(dk.dir)
	if err != nil {
		t.Errorf("read mounts: %v", err)
		return
	}
	slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
	for _, m := range mounts {
		t.Errorf("dockerd left %s mounted", m)
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", m, err)
		}
	}
}

// mountsUnder returns the mount points at or below dir, from field 5 of
// /proc/self/mountinfo (proc(5)).
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		if m := fields[4]; m == dir || strings.HasPrefix(m, dir+"/") {
			out = append(out, m)
		}
	}
	return out, sc.Err()
}

// withoutGRPC drops the gRPC connectivity chatter from dockerd's log.
func withoutGRPC(log []byte) string {
	var b strings.Builder
	for line := range strings.Lines(string(log)) {
		if !strings.Contains(line, "module=grpc") {
			b.WriteString(line)
		}
	}
	return b.String()
}
