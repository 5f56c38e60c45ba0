package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/regproxy/regproxy/internal/testpki"
)

// TestMirrorBadFlags: a mirror flag that cannot work is a bad flag (exit
// 2, one line naming it), found before anything touches the data dir.
// Not parallel: runCLI.
func TestMirrorBadFlags(t *testing.T) {
	dir := t.TempDir()
	pki, err := testpki.New("test CA", []string{"mirror.test"})
	if err != nil {
		t.Fatal(err)
	}
	cert := writeConfig(t, filepath.Join(dir, "cert.pem"), string(pki.ServerPEM))
	key := writeConfig(t, filepath.Join(dir, "key.pem"), string(pki.KeyPEM))
	users := writeBcryptHtpasswd(t)
	for _, tc := range []struct {
		name, flag string
		args       []string
	}{
		{"TLS without a port", "mirror-listen", []string{"--mirror-hostname", "mirror.test"}},
		{"cert without key", "mirror-tls-cert", []string{"--mirror-listen", "127.0.0.1:0", "--mirror-tls-cert", cert}},
		{"key without cert", "mirror-tls-cert", []string{"--mirror-listen", "127.0.0.1:0", "--mirror-tls-key", key}},
		{"cert and hostname", "mirror-hostname", []string{"--mirror-listen", "127.0.0.1:0", "--mirror-tls-cert", cert, "--mirror-tls-key", key, "--mirror-hostname", "mirror.test"}},
		{"hostname with a scheme", "mirror-hostname", []string{"--mirror-listen", "127.0.0.1:0", "--mirror-hostname", "https://mirror.test"}},
		{"hostname with a port", "mirror-hostname", []string{"--mirror-listen", "127.0.0.1:0", "--mirror-hostname", "mirror.test:5000"}},
		{"listen without a port", "mirror-listen", []string{"--mirror-listen", "bogus"}},
		{"cert that is not", "mirror-tls-cert", []string{"--mirror-listen", "127.0.0.1:0", "--mirror-tls-cert", key, "--mirror-tls-key", key}},
		{"open mirror under --htpasswd", "mirror-listen", []string{"--mirror-listen", ":0", "--htpasswd", users}},
		{"cert file missing", "mirror-tls-cert", []string{"--mirror-listen", "127.0.0.1:0", "--mirror-tls-cert", filepath.Join(dir, "none.pem"), "--mirror-tls-key", key}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := t.TempDir()
			code, stdout, stderr := runCLI(t, append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", data}, tc.args...)...)
			wantUsageError(t, "--"+tc.flag, code, stdout, stderr)
			if entries, _ := os.ReadDir(data); len(entries) != 0 {
				t.Errorf("the data dir holds %d entries after a bad flag; want none", len(entries))
			}
		})
	}
}

// TestMirrorHostnameOutsideNameConstraints: a CA limited to the
// registries cannot vouch for the mirror's host name; serve says so, as a
// bad flag, rather than serve a certificate no node accepts.
func TestMirrorHostnameOutsideNameConstraints(t *testing.T) {
	code, stdout, stderr := runCLI(t, serveArgs(t, "--registries", "registry.test", "--ca-name-constraints",
		"--mirror-listen", "127.0.0.1:0", "--mirror-hostname", "mirror.example")...)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	last := lines[len(lines)-1]
	if code != 2 || stdout != "" || !strings.HasPrefix(last, "regproxy: --mirror-hostname: ") || !strings.Contains(last, "cannot vouch for mirror.example") {
		t.Errorf("exit code %d, stdout %q, last line of stderr %q; want 2, none, and --mirror-hostname: ... cannot vouch for mirror.example", code, stdout, last)
	}
}

// TestMirrorTLS: the mirror port speaks HTTPS with a certificate
// regproxy's CA signs for --mirror-hostname, which a client trusting the
// CA from /ca.crt accepts, or with the one --mirror-tls-cert names.
func TestMirrorTLS(t *testing.T) {
	t.Parallel()
	pki, err := testpki.New("test CA", []string{"mirror.test"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert := writeConfig(t, filepath.Join(dir, "cert.pem"), string(pki.ServerPEM))
	key := writeConfig(t, filepath.Join(dir, "key.pem"), string(pki.KeyPEM))
	for _, tc := range []struct {
		name       string
		flags      []string
		serverName string
		roots      func(d *daemon) *x509.CertPool
	}{
		{"minted by the CA", []string{"--mirror-hostname", "mirror.node.test"}, "mirror.node.test", func(d *daemon) *x509.CertPool {
			_, pem, err := d.get("/ca.crt")
			pool := x509.NewCertPool()
			if err != nil || !pool.AppendCertsFromPEM(pem) {
				t.Fatalf("GET /ca.crt: %v", err)
			}
			return pool
		}},
		{"files", []string{"--mirror-tls-cert", cert, "--mirror-tls-key", key}, "mirror.test", func(*daemon) *x509.CertPool { return pki.Pool }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t, append([]string{"--registries", "registry.test", "--mirror-listen", "127.0.0.1:0"}, tc.flags...)...)
			tr := &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: tc.roots(d), ServerName: tc.serverName}}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			resp, err := c.Get("https://" + d.mirrorAddr(t) + "/v2/")
			if err != nil {
				t.Fatalf("GET /v2/ over TLS: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(body) != "{}" {
				t.Errorf("GET /v2/ over TLS: %d %s; want 200 {}", resp.StatusCode, body)
			}
		})
	}
}

// TestReadmeMirrorConfigs: the client configurations the README's "Mirror
// front end" shows are what the setup scripts write with --mirror
// http://cache.corp:5000 (daemon.json; hosts.toml under _default;
// registries.conf.d for quay.io), comments and layout aside. The mirror
// tests configure their clients from the same scripts.
func TestReadmeMirrorConfigs(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(b), "\n## Mirror front end\n")
	section, _, _ = strings.Cut(section, "\n## ")
	blocks := map[string][]string{} // language → the section's blocks of it
	for rest := section; ; {
		_, after, ok := strings.Cut(rest, "\n```")
		if !ok {
			break
		}
		lang, after, _ := strings.Cut(after, "\n")
		body, after, _ := strings.Cut(after, "```")
		blocks[lang] = append(blocks[lang], body)
		rest = after
	}
	const mirror = "http://cache.corp:5000"
	docker := mirrorRoot(t, "setup-docker.sh", mirror).read(t, "etc/docker/daemon.json")
	hosts := mirrorRoot(t, "setup-containerd.sh", mirror, "--registries", "_default").read(t, "etc/containerd/certs.d/_default/hosts.toml")
	conf := mirrorRoot(t, "setup-podman.sh", mirror, "--registries", "quay.io").read(t, "etc/containers/registries.conf.d/regproxy.conf")

	var readme, written any
	if len(blocks["json"]) == 0 || json.Unmarshal([]byte(blocks["json"][0]), &readme) != nil ||
		json.Unmarshal([]byte(docker), &written) != nil || !reflect.DeepEqual(readme, written) {
		t.Errorf("README daemon.json %q; setup-docker.sh writes\n%s", blocks["json"], docker)
	}
	var tomls []string
	for _, body := range blocks["toml"] {
		tomls = append(tomls, tomlText(body))
	}
	for _, want := range []string{tomlText(hosts), tomlText(conf)} {
		if !slices.Contains(tomls, want) {
			t.Errorf("the README shows no TOML block that reads\n%s\namong\n%s", want, strings.Join(tomls, "\n--\n"))
		}
	}
}

// tomlText is TOML without comments, blank lines and indentation, and with
// single spaces: what two equal configurations have in common.
func tomlText(s string) string {
	var out []string
	for line := range strings.Lines(s) {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.Join(strings.Fields(line), " "); line != "" {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestMirrorUnderHtpasswd: with --htpasswd the mirror port serves on
// loopback, or beyond it with --mirror-open; TestMirrorBadFlags has the
// refusal without either.
func TestMirrorUnderHtpasswd(t *testing.T) {
	t.Parallel()
	users := writeBcryptHtpasswd(t)
	for _, args := range [][]string{
		{"--mirror-listen", "127.0.0.1:0"},
		{"--mirror-listen", ":0", "--mirror-open"},
	} {
		d := startDaemon(t, append([]string{"--data-dir", t.TempDir(), "--htpasswd", users}, args...)...)
		if !d.waitLogged(0, func(e logEntry) bool { return e.Msg == "regproxy mirror serving" }) {
			t.Errorf("serve %s: no mirror port:\n%s", strings.Join(args, " "), d.log)
		}
	}
}

// writeBcryptHtpasswd writes an htpasswd file with one bcrypt user.
func writeBcryptHtpasswd(t *testing.T) string {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return writeConfig(t, filepath.Join(t.TempDir(), "htpasswd"), "alice:"+string(hash)+"\n")
}
