package main

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

// TestSetupNode runs scripts/setup-node.sh, the older entry point that
// runs setup-docker.sh and setup-containerd.sh, against the /ca.crt of a
// real regproxy, with REGPROXY_SETUP_ROOT as its --root: a right
// --ca-sha256 (in regproxy's format, or openssl's with colons) installs
// the CA and both drop-ins, a wrong one or none installs nothing.
func TestSetupNode(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "--registries", "registry.test")
	fp, caPEM := daemonCA(t, d)
	colons := strings.ToUpper(strings.Join(splitEvery(fp, 2), ":")) // as openssl -fingerprint prints it
	wrong := strings.Repeat("0", 64)
	const caFile = "usr/local/share/ca-certificates/regproxy.crt"
	dropins := []string{
		"etc/systemd/system/containerd.service.d/http-proxy.conf",
		"etc/systemd/system/docker.service.d/http-proxy.conf",
	}
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string // what stderr must contain
	}{
		{"right ca-sha256", []string{"--ca-sha256", fp, d.addr}, 0, ""},
		{"with colons", []string{"--ca-sha256=" + colons, d.addr}, 0, ""},
		{"wrong ca-sha256", []string{"--ca-sha256", wrong, d.addr}, 1, "does not match --ca-sha256 " + wrong + "; nothing changed"},
		{"no ca-sha256", []string{d.addr}, 2, "--ca-sha256 HEX is required"},
		{"no proxy", []string{"--ca-sha256", fp}, 2, "want one PROXY_HOST[:PORT]"},
		{"two proxies", []string{"--ca-sha256", fp, d.addr, d.addr}, 2, "want one PROXY_HOST[:PORT]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNodeRoot(t, nil)
			r := n.setupNode(t, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("want exit status %d and stderr with %q; got %s", tc.code, tc.stderr, r)
			}
			tree := n.tree(t)
			if tc.code != 0 {
				if len(tree) != 0 {
					t.Errorf("files written: %q", slices.Sorted(maps.Keys(tree)))
				}
				return
			}
			if tree[caFile].data != string(caPEM) {
				t.Errorf("%s:\n%s\nwant what regproxy serves:\n%s", caFile, tree[caFile].data, caPEM)
			}
			for _, name := range dropins {
				if !strings.Contains(tree[name].data, `"HTTPS_PROXY=http://`+d.addr+`/"`) {
					t.Errorf("%s:\n%s\nwant HTTPS_PROXY=http://%s/", name, tree[name].data, d.addr)
				}
			}
		})
	}
}

// setupNode runs setup-node.sh as automation that predates the new
// scripts does: REGPROXY_SETUP_ROOT, not --root.
func (n *nodeRoot) setupNode(t *testing.T, args ...string) scriptRun {
	t.Helper()
	n.env = append(n.env, "REGPROXY_SETUP_ROOT="+n.dir)
	return n.sh(t, nil, setupTimeout, append([]string{scriptPath(t, "setup-node.sh")}, args...)...)
}

// splitEvery cuts s into pieces of n bytes.
func splitEvery(s string, n int) []string {
	var parts []string
	for len(s) > n {
		parts, s = append(parts, s[:n]), s[n:]
	}
	return append(parts, s)
}
