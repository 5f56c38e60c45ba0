package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// These tests run regproxy serve --htpasswd: clients must authenticate on
// the proxy port, as curl does with -x http://user:pass@… or --proxy-user.

const (
	alicePassword = "alice-s3cret"
	// bobMD5 is `openssl passwd -apr1 -salt 0hOTwS2J bob-s3cret`: an entry
	// regproxy does not use.
	bobMD5 = "$apr1$0hOTwS2J$2eu2QHXSRHE0R9WFh/tA0."
)

// writeHtpasswd writes an htpasswd file with bob (MD5) on line 3 and
// alice (bcrypt, $2y$ as `htpasswd -B` writes it, at the lowest cost to
// keep the test fast) on line 4.
func writeHtpasswd(t *testing.T) string {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(alicePassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "htpasswd")
	content := "# proxy users\n\nbob:" + bobMD5 + "\nalice:$2y$" + strings.TrimPrefix(string(hash), "$2a$") + "\n"
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestHtpasswdCurl pulls with curl through a regproxy that asks for
// credentials, giving them either way curl takes them; wrong ones, none,
// or those of bob, whose MD5 entry was skipped with a warning, get 407 on
// the CONNECT. /ca.crt and /healthz stay open (newHubSetup fetched both
// without credentials). The access log names the user, never a password.
func TestHtpasswdCurl(t *testing.T) {
	t.Parallel()
	s := newHubSetup(t, "--htpasswd", writeHtpasswd(t))
	base := newCurl(t, s)
	withArgs := func(args ...string) *curl {
		c := *base
		c.args = append(append([]string(nil), base.args...), args...)
		return &c
	}
	proxyHost := strings.TrimPrefix(s.ProxyURL(), "http://")
	t.Run("warning for the MD5 line", func(t *testing.T) {
		wantLogged(t, s.d, func(e map[string]any) bool {
			return e["level"] == "WARN" && e["line"] == float64(3) && e["user"] == "bob" && strings.Contains(e["reason"].(string), "MD5")
		})
	})
	for _, tc := range []struct {
		name string
		c    *curl
	}{
		{"user and password in the -x URL", withArgs("-x", "http://alice:"+alicePassword+"@"+proxyHost)},
		{"--proxy-user", withArgs("-x", s.ProxyURL(), "--proxy-user", "alice:"+alicePassword)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			c.ping(t, s) // the registry's own 401: the CONNECT was let in and intercepted
			token := c.pullToken(t, s, s.Image.Repo)
			for _, b := range c.manifest(t, s, s.Image, token, s.Image.Tag, s.Image.Digest) {
				c.blob(t, s, s.Image, token, b)
			}
		})
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"no credentials", []string{"-x", s.ProxyURL()}},
		{"wrong password", []string{"-x", s.ProxyURL(), "--proxy-user", "alice:wrong"}},
		{"user of the skipped MD5 line", []string{"-x", s.ProxyURL(), "--proxy-user", "bob:bob-s3cret"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := withArgs(tc.args...).connectStatus(t, "https://"+s.up.Host+"/v2/"); got != "407" {
				t.Errorf("CONNECT answered %q; want 407", got)
			}
		})
	}
	if !s.d.waitLogged(0, func(e logEntry) bool { return e.Outcome == "DENIED" && e.Status == 407 }) {
		t.Error(`no access-log line with "outcome":"DENIED","status":407`)
	}
	wantLogged(t, s.d, func(e map[string]any) bool {
		return e["msg"] == "request" && e["user"] == "alice" && e["outcome"] == "MISS"
	})
	for _, secret := range []string{alicePassword, "bob-s3cret", bobMD5} {
		if strings.Contains(s.d.log.String(), secret) {
			t.Errorf("the log shows %q", secret)
		}
	}
}

// pullToken asks the token server that /v2/ names for a pull token of
// repo, through the proxy (auth.test is intercepted too).
func (c *curl) pullToken(t *testing.T, s *hubSetup, repo string) string {
	t.Helper()
	c.run(t, "GET /v2/", "-o", os.DevNull, "-D", c.file("v2.headers"), "https://"+s.up.Host+"/v2/")
	ch := curlChallenge(t, c.file("v2.headers"))
	body := c.run(t, "GET token", "-f", "-G", "--data-urlencode", "service="+ch["service"],
		"--data-urlencode", "scope=repository:"+repo+":pull", ch["realm"])
	var tok struct{ Token string }
	if err := json.Unmarshal([]byte(body), &tok); err != nil || tok.Token == "" {
		t.Fatalf("token response %.200q: %v", body, err)
	}
	return tok.Token
}

// connectStatus runs curl on url and returns the status its proxy gave to
// the CONNECT (curl fails when that is not 200).
func (c *curl) connectStatus(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), curlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.path, append(append([]string(nil), c.args...), "-o", os.DevNull, "-w", "%{http_connect}", url)...)
	cmd.Env = c.env
	out, _ := cmd.Output()
	return string(out)
}

// wantLogged fails unless a JSON line of d's log matches.
func wantLogged(t *testing.T, d *daemon, match func(map[string]any) bool) {
	t.Helper()
	for line := range strings.Lines(d.log.String()) {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil && match(e) {
			return
		}
	}
	t.Errorf("no matching line in the log:\n%s", d.log)
}

// TestHtpasswdBadFile: an htpasswd file that cannot be read, or that lets
// nobody in, stops regproxy serve with a usage error (exit 2) on one line
// naming --htpasswd, and never a hash. Not parallel: see runCLI.
func TestHtpasswdBadFile(t *testing.T) {
	dir := t.TempDir()
	md5Only := filepath.Join(dir, "md5")
	if err := os.WriteFile(md5Only, []byte("# team\nbob:"+bobMD5+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  string // REGPROXY_HTPASSWD, when set
		want []string
	}{
		{"missing file", []string{"--htpasswd", filepath.Join(dir, "absent")}, "", []string{"absent", "no such file"}},
		{"a directory", []string{"--htpasswd", dir}, "", []string{dir, "is a directory"}},
		{"MD5 entries only", []string{"--htpasswd", md5Only}, "", []string{md5Only, "no usable entry", "line 2", `"bob"`, "MD5"}},
		{"from REGPROXY_HTPASSWD", nil, md5Only, []string{md5Only, "no usable entry"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("REGPROXY_HTPASSWD", tc.env)
			}
			code, stdout, stderr := runCLI(t, serveArgs(t, tc.args...)...)
			wantUsageError(t, "--htpasswd", code, stdout, stderr)
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not say %q", stderr, w)
				}
			}
			if strings.Contains(stderr, bobMD5) {
				t.Errorf("stderr %q shows the hash", stderr)
			}
		})
	}
}

// openPortWarning tells the start-up warning about an open proxy port.
func openPortWarning(e logEntry) bool { return strings.Contains(e.Msg, "asks for no credentials") }

// TestOpenPortWarning: regproxy warns at start-up when its port listens
// beyond loopback without --htpasswd, and only then.
func TestOpenPortWarning(t *testing.T) {
	t.Parallel()
	htpasswd := writeHtpasswd(t)
	for _, tc := range []struct {
		name string
		args []string // after startDaemon's --listen 127.0.0.1:0, which a later --listen overrides
		want bool
	}{
		{"all addresses, no --htpasswd", []string{"--listen", "0.0.0.0:0"}, true},
		{"all addresses, --htpasswd", []string{"--listen", "0.0.0.0:0", "--htpasswd", htpasswd}, false},
		{"127.0.0.1", nil, false},
		{"localhost", []string{"--listen", "localhost:0"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t, tc.args...)
			if got := d.logged(0, openPortWarning); got != tc.want {
				t.Errorf("warned %v; want %v", got, tc.want)
			}
		})
	}
}

// TestWarnIfOpenAddresses: the rule behind the warning, for addresses the
// test host may not have.
func TestWarnIfOpenAddresses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:3128", false},
		{"127.0.0.2:3128", false},
		{"[::1]:3128", false},
		{"[::ffff:127.0.0.1]:3128", false},
		{"0.0.0.0:3128", true},
		{"[::]:3128", true},
		{"10.0.0.5:3128", true},
		{"[fd00::5]:3128", true},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			t.Parallel()
			addr, err := net.ResolveTCPAddr("tcp", tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			var buf syncBuffer
			warnIfOpen(slog.New(slog.NewTextHandler(&buf, nil)), addr, nil)
			if got := buf.String() != ""; got != tc.want {
				t.Errorf("warned %v; want %v", got, tc.want)
			}
		})
	}
}
