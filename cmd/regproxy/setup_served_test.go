package main

import (
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
)

// servedRegistries is the --registries of TestSetupServed's regproxy.
const servedRegistries = "registry.test quay.io docker.io"

// TestSetupServed fetches each setup script from a real regproxy, as the
// README's one-liner does, and checks that it names the proxy by the
// address the request came to and regproxy's --registries as defaults,
// that it is shellcheck-clean, and that piped into sh it leaves the same
// files and says the same things as the script of scripts/ given those
// values: the served script is the file, assembled, and nothing else.
func TestSetupServed(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "--registries", servedRegistries)
	fp, caPEM := daemonCA(t, d)
	modes := []struct {
		name string
		args []string
	}{
		{"proxy", nil},
		{"mirror", []string{"--mirror", "http://mirror.test:5000"}},
		{"mirror-tls", []string{"--mirror", "https://mirror.test"}},
	}
	for _, client := range []string{"docker", "containerd", "podman", "enroot"} {
		script := fetchScript(t, d, client)
		t.Run(client+"/shellcheck", func(t *testing.T) {
			t.Parallel()
			shellcheckStdin(t, script)
		})
		for _, mode := range modes {
			if client == "enroot" && mode.args != nil {
				continue // enroot has no mirror mode
			}
			t.Run(client+"/"+mode.name, func(t *testing.T) {
				t.Parallel()
				args := append([]string{"--ca-sha256", fp}, mode.args...)
				served := newNodeRoot(t, nil)
				rs := served.runServed(t, script, args...)
				file := newNodeRoot(t, nil)
				rf := file.runFile(t, "setup-"+client+".sh", append(args, "--proxy", "http://"+d.addr+"/", "--registries", servedRegistries)...)
				if rs.code != 0 || rf.code != 0 {
					t.Fatalf("served script: %s\nscripts/setup-%s.sh: %s", rs, client, rf)
				}
				if rs.stdout != rf.stdout || rs.stderr != rf.stderr {
					t.Errorf("the served script and the file say different things:\nserved: %s\nfile: %s", rs, rf)
				}
				got, want := served.tree(t), file.tree(t)
				if diff := diffTrees(want, got); diff != "" {
					t.Errorf("the served script and the file wrote different files (+ served, - file):\n%s", diff)
				}
				if ca, ok := got["usr/local/share/ca-certificates/regproxy.crt"]; ok && ca.data != string(caPEM) {
					t.Errorf("installed CA:\n%s\nwant what regproxy serves:\n%s", ca.data, caPEM)
				}
			})
		}
	}
}

// TestSetupServedRefuses checks the served script's refusals, which come
// before it changes anything: a CA whose fingerprint is not the one given,
// fetched from regproxy itself, and no fingerprint at all. --help shows
// the proxy it defaults to, at once.
func TestSetupServedRefuses(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "--registries", servedRegistries)
	fp, _ := daemonCA(t, d)
	script := fetchScript(t, d, "docker")
	wrong := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string // what stdout must contain
		stderr string // what stderr must contain
	}{
		{"wrong ca-sha256", []string{"--ca-sha256", wrong}, 1, "",
			"ca_sha256=" + fp + " from http://" + d.addr + "/ca.crt does not match --ca-sha256 " + wrong + "; nothing changed"},
		{"no ca-sha256", nil, 2, "", "--ca-sha256 HEX is required"},
		{"help", []string{"--help"}, 0, "Default: http://" + d.addr + "/, where this script came from", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNodeRoot(t, nil)
			r := n.runServed(t, script, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stdout, tc.stdout) || !strings.Contains(r.stderr, tc.stderr) {
				t.Errorf("want exit status %d, stdout with %q, stderr with %q; got %s", tc.code, tc.stdout, tc.stderr, r)
			}
			if tree := n.tree(t); len(tree) != 0 {
				t.Errorf("the root changed: %q", slices.Sorted(maps.Keys(tree)))
			}
		})
	}
}

// daemonCA returns the fingerprint and PEM of d's CA, as /ca.crt serves
// it, and checks that d logged that fingerprint at start, in the format
// the scripts print and take.
func daemonCA(t *testing.T, d *daemon) (fp string, caPEM []byte) {
	t.Helper()
	code, caPEM, err := d.get("/ca.crt")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /ca.crt: %d, %v", code, err)
	}
	file := t.TempDir() + "/ca.crt"
	if err := os.WriteFile(file, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	fp = pemFingerprint(t, file)
	if !strings.Contains(d.log.String(), `"ca_sha256":"`+fp+`"`) {
		t.Fatalf("regproxy did not log ca_sha256 %s:\n%s", fp, d.log)
	}
	return fp, caPEM
}

// fetchScript GETs /setup/client from d and checks the defaults filled in.
func fetchScript(t *testing.T, d *daemon, client string) []byte {
	t.Helper()
	code, script, err := d.get("/setup/" + client)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /setup/%s: %d, %v", client, code, err)
	}
	for _, want := range []string{
		"\nserved_proxy='http://" + d.addr + "/'\n",
		"\nserved_registries='" + servedRegistries + "'\n",
	} {
		if !strings.Contains(string(script), want) {
			t.Errorf("GET /setup/%s: no line %q in:\n%s", client, strings.TrimSpace(want), script)
		}
	}
	return script
}

// TestSetupIndexOneLiner takes the command that the proxy port's page at
// / shows curl, with the address and the CA's fingerprint filled in, and
// runs it as printed (with --root added), as an admin pastes it: it must
// fetch the served script, check the CA it fetches against the
// fingerprint, and install it.
func TestSetupIndexOneLiner(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "--registries", servedRegistries)
	fp, caPEM := daemonCA(t, d)
	code, page, err := d.get("/")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /: %d, %v", code, err)
	}
	want := "curl -fsS http://" + d.addr + "/setup/docker | sh -s -- --ca-sha256 " + fp
	var cmd string
	for line := range strings.Lines(string(page)) {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "curl ") {
			cmd = line
		}
	}
	if cmd != want {
		t.Fatalf("GET / shows the command %q, want %q; the page:\n%s", cmd, want, page)
	}
	n := newNodeRoot(t, nil)
	r := n.sh(t, nil, setupTimeout, "-c", cmd+" --root "+n.dir)
	if r.code != 0 || !strings.Contains(r.stdout, "CA: ca_sha256="+fp+" from http://"+d.addr+"/ca.crt matches --ca-sha256") {
		t.Fatalf("the page's command: %s", r)
	}
	if got := n.read(t, "usr/local/share/ca-certificates/regproxy.crt"); got != string(caPEM) {
		t.Errorf("installed CA:\n%s\nwant what regproxy serves:\n%s", got, caPEM)
	}
	if got := n.read(t, "etc/systemd/system/docker.service.d/http-proxy.conf"); !strings.Contains(got, "HTTPS_PROXY=http://"+d.addr+"/") {
		t.Errorf("docker's drop-in:\n%s\nwant HTTPS_PROXY=http://%s/", got, d.addr)
	}
}
