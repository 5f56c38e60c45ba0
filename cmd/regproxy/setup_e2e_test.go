package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSetupDockerd configures a real dockerd only from what setup-docker.sh
// writes: the script runs with --root against regproxy's own /ca.crt, the
// Environment= lines of its systemd drop-in become dockerd's environment,
// and SSL_CERT_FILE points at the CA it installed, the one root dockerd
// then has (update-ca-certificates, which --root skips, would have put it
// into the system bundle). An image pulled twice, with dockerd's store
// emptied in between, must fetch no blob upstream the second time.
func TestSetupDockerd(t *testing.T) {
	t.Parallel()
	bin, cli := lookDocker(t)
	s := newHubSetup(t)
	n := newNodeRoot(t, nil)
	if r := n.runFile(t, "setup-docker.sh", "--proxy", s.ProxyURL(), "--ca-sha256", pemFingerprint(t, s.caFile)); r.code != 0 {
		t.Fatalf("setup-docker.sh: %s", r)
	}
	env := systemdEnvironment(t, n.read(t, "etc/systemd/system/docker.service.d/http-proxy.conf"))
	if !strings.Contains(strings.Join(env, "\n"), "HTTPS_PROXY="+s.ProxyURL()) {
		t.Fatalf("the drop-in sets %q, no HTTPS_PROXY=%s", env, s.ProxyURL())
	}
	env = append(env, "SSL_CERT_FILE="+filepath.Join(n.dir, "usr/local/share/ca-certificates/regproxy.crt"))
	dk := startDockerd(t, bin, cli, env)

	dk.pull(t, s, s.Image)
	before := s.BlobFetches()
	if before == 0 {
		t.Fatal("first pull: no blob fetches upstream; the second pull would prove nothing")
	}
	dk.removeAll(t, s, []hubImage{s.Image})
	dk.pull(t, s, s.Image)
	s.AssertNoBlobFetchesSince(t, before, "dockerd second pull, set up by setup-docker.sh")
}

// systemdEnvironment returns the assignments of a unit file's
// Environment= lines, unquoted as systemd does (systemd.exec(5)): each is
// one word, double-quoted or bare.
func systemdEnvironment(t *testing.T, unit string) []string {
	t.Helper()
	var env []string
	for line := range strings.Lines(unit) {
		value, ok := strings.CutPrefix(strings.TrimSpace(line), "Environment=")
		if !ok {
			continue
		}
		for value = strings.TrimSpace(value); value != ""; value = strings.TrimSpace(value) {
			var word string
			if rest, ok := strings.CutPrefix(value, `"`); ok {
				end := strings.Index(rest, `"`)
				if end < 0 || strings.Contains(rest[:end], `\`) {
					t.Fatalf("Environment= word this test cannot unquote: %s", value)
				}
				word, value = rest[:end], rest[end+1:]
			} else {
				word, value, _ = strings.Cut(value, " ")
			}
			env = append(env, word)
		}
	}
	if len(env) == 0 {
		t.Fatalf("no Environment= in:\n%s", unit)
	}
	return env
}

// TestSetupEnroot pulls an image the way enroot does (see TestCurlPull),
// twice, with curl configured only from what setup-enroot.sh writes:
// https_proxy and no_proxy from its enroot.conf.d drop-in, read as enroot
// reads them, and the CA it installed as curl's one root (curl would find
// it in the system bundle, which --root does not update). The second pull
// must fetch no blob upstream.
//
// regproxy's CA here is one gen-ca.sh made, name-constrained to the hub's
// hosts, so the test also shows that OpenSSL accepts such a CA and the
// leaves regproxy signs with it.
func TestSetupEnroot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if r := newNodeRoot(t, nil).sh(t, nil, setupTimeout, scriptPath(t, "gen-ca.sh"), "--out", dir,
		"--name-constraints", "registry.test auth.test cdn.test"); r.code != 0 {
		t.Fatalf("gen-ca.sh: %s", r)
	}
	crt := filepath.Join(dir, "ca.crt")
	s := newHubSetup(t, "--ca-cert", crt, "--ca-key", filepath.Join(dir, "ca.key"))
	n := newNodeRoot(t, map[string]string{"etc/enroot/enroot.conf": shippedEnrootConf, "etc/enroot/enroot.conf.d/": ""})
	if r := n.runFile(t, "setup-enroot.sh", "--proxy", s.ProxyURL(), "--ca-sha256", pemFingerprint(t, crt)); r.code != 0 {
		t.Fatalf("setup-enroot.sh: %s", r)
	}
	conf := enrootConfig(n.read(t, "etc/enroot/enroot.conf.d/regproxy.conf"))
	path, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	c := &curl{
		path: path,
		dir:  t.TempDir(),
		env: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(),
			"https_proxy=" + conf["https_proxy"], "no_proxy=" + conf["no_proxy"]},
		args: []string{"-q", "-sS", "--cacert", filepath.Join(n.dir, "usr/local/share/ca-certificates/regproxy.crt"),
			"--capath", t.TempDir(), "--suppress-connect-headers", "--max-time", "60"},
	}
	img := s.Image
	for pull := range 2 {
		before := s.BlobFetches()
		c.ping(t, s)
		token := c.token(t, s, img)
		for _, b := range c.manifest(t, s, img, token, img.Tag, img.Digest) {
			c.blob(t, s, img, token, b)
		}
		if pull == 1 {
			s.AssertNoBlobFetchesSince(t, before, "second curl pull, set up by setup-enroot.sh")
		} else if s.BlobFetches() == before {
			t.Fatal("first pull: no blob fetches upstream; the second pull would prove nothing")
		}
	}
}

// enrootConfig reads an enroot.conf file as enroot's config::load does:
// KEY VALUE (or KEY=VALUE) lines for the keys it exports, the first value
// of each winning. enroot also expands the value with eval echo, which the
// script's values (a URL and a host list) do not need.
func enrootConfig(text string) map[string]string {
	conf := map[string]string{}
	for line := range strings.Lines(text) {
		line = strings.TrimLeft(line, " \t")
		i := strings.IndexAny(line, " \t=")
		if i < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		key, value := line[:i], strings.TrimSpace(strings.TrimLeft(line[i:], " \t="))
		if _, ok := conf[key]; !ok {
			conf[key] = value
		}
	}
	return conf
}
