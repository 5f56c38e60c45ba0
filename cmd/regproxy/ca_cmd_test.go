package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/regproxy/regproxy/ca"
)

// curlExitCertificate is curl's exit code for a server certificate that
// does not verify (CURLE_PEER_FAILED_VERIFICATION).
const curlExitCertificate = 60

// initCA runs regproxy ca init in-process and fails the test unless it
// succeeds. It returns the CA directory.
func initCA(t *testing.T, dataDir string, args ...string) string {
	t.Helper()
	code, _, stderr := runCLI(t, append([]string{"ca", "init", "--data-dir", dataDir}, args...)...)
	if code != 0 {
		t.Fatalf("ca init %q: exit code %d, stderr %q", args, code, stderr)
	}
	return filepath.Join(dataDir, "ca")
}

// loadDir loads the CA that regproxy wrote to dir, as serve would.
func loadDir(t *testing.T, dir string) *ca.CA {
	t.Helper()
	authority, err := ca.LoadOrCreate(dir, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return authority
}

// TestNameConstraintsClients is the point of --name-constraints: a leaf for
// an intercepted registry verifies, while a leaf that the CA's key is made
// to sign for any other name (as a thief of the key would) is refused by Go
// and by curl. The same leaves from a CA without constraints verify, so the
// refusals are the constraints' doing.
func TestNameConstraintsClients(t *testing.T) {
	registries := "docker.io registry.test:5000 127.0.0.1"
	constrained := loadDir(t, initCA(t, t.TempDir(), "--name-constraints", "--registries", registries))
	open := loadDir(t, initCA(t, t.TempDir(), "--registries", registries))
	curlPath, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl missing: run make test-deps (scripts/install-test-deps.sh)")
	}
	for _, tc := range []struct {
		name string
		ca   *ca.CA
		host string
		ok   bool
	}{
		{"registry", constrained, "registry.test", true},
		{"docker hub api", constrained, "registry-1.docker.io", true},
		{"docker hub cdn", constrained, "production.cloudflare.docker.com", true},
		{"registry address", constrained, "127.0.0.1", true},
		{"other domain", constrained, "evil.example.com", false},
		{"suffix without dot", constrained, "notdocker.io", false},
		{"other address", constrained, "127.0.0.2", false},
		{"unconstrained other domain", open, "evil.example.com", true},
		{"unconstrained other address", open, "127.0.0.2", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaf, err := tc.ca.Leaf(tc.host)
			if err != nil {
				t.Fatal(err)
			}
			goErr := verifyGo(tc.ca, leaf, tc.host)
			if (goErr == nil) != tc.ok {
				t.Errorf("Go verify: %v, want ok=%v", goErr, tc.ok)
			}
			var invalid x509.CertificateInvalidError
			if goErr != nil && (!errors.As(goErr, &invalid) || invalid.Reason != x509.CANotAuthorizedForThisName) {
				t.Errorf("Go verify: %v, want a name constraint error", goErr)
			}
			code, stderr := curlLeaf(t, curlPath, tc.ca, leaf, tc.host)
			switch {
			case tc.ok && code != 0:
				t.Errorf("curl: exit code %d, want 0; stderr: %s", code, stderr)
			case !tc.ok && code != curlExitCertificate:
				t.Errorf("curl: exit code %d, want %d (certificate refused); stderr: %s", code, curlExitCertificate, stderr)
			}
		})
	}
}

// verifyGo verifies leaf for host with authority as the only root.
func verifyGo(authority *ca.CA, leaf *tls.Certificate, host string) error {
	roots := x509.NewCertPool()
	roots.AddCert(authority.Certificate())
	_, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots})
	return err
}

// curlLeaf serves leaf from a TLS server on 127.0.0.1 and fetches
// https://host:port/ from it with curl, which trusts only authority. It
// returns curl's exit code and stderr.
func curlLeaf(t *testing.T, curlPath string, authority *ca.CA, leaf *tls.Certificate, host string) (int, string) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok")
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	srv.StartTLS()
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, authority.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	hostPort := net.JoinHostPort(host, port)
	// -q (first) ignores any .curlrc; --capath names an empty directory so
	// that the system's roots add nothing. Names go to the server with
	// --resolve; addresses, which curl does not resolve, with --connect-to.
	args := []string{"-q", "-sS", "-o", os.DevNull, "--max-time", "10", "--noproxy", "*",
		"--cacert", caFile, "--capath", t.TempDir()}
	if net.ParseIP(host) != nil {
		args = append(args, "--connect-to", hostPort+":127.0.0.1:"+port)
	} else {
		args = append(args, "--resolve", hostPort+":127.0.0.1")
	}
	ctx, cancel := context.WithTimeout(t.Context(), curlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, curlPath, append(args, "https://"+hostPort+"/")...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), stderr.String()
	}
	t.Fatalf("curl: %v", err)
	return 0, ""
}

// TestCAInit checks ca init: it writes a CA, refuses to replace it without
// --force, and with --name-constraints limits it to the registries, Docker
// Hub's hosts included.
func TestCAInit(t *testing.T) {
	dataDir := t.TempDir()
	code, stdout, stderr := runCLI(t, "ca", "init", "--data-dir", dataDir)
	if code != 0 || stderr != "" {
		t.Fatalf("ca init: exit code %d, stderr %q", code, stderr)
	}
	dir := filepath.Join(dataDir, "ca")
	first := loadDir(t, dir)
	if first.Constrained() {
		t.Error("ca init without --name-constraints made a constrained CA")
	}
	wantInitHint(t, stdout, dir, false)

	code, stdout, stderr = runCLI(t, "ca", "init", "--data-dir", dataDir, "--name-constraints")
	wantRuntimeError(t, "--force", code, stdout, stderr)
	if !bytes.Equal(loadDir(t, dir).CertPEM(), first.CertPEM()) {
		t.Fatal("ca init without --force replaced the CA")
	}

	code, stdout, stderr = runCLI(t, "ca", "init", "--data-dir", dataDir, "--name-constraints", "--force",
		"--registries", "docker.io quay.io:443 registry.test:5000 10.1.2.3 [fd00::1]:5000")
	if code != 0 || stderr != "" {
		t.Fatalf("ca init --force: exit code %d, stderr %q", code, stderr)
	}
	second := loadDir(t, dir)
	wantInitHint(t, stdout, dir, true)
	wantNames := []string{
		"docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com", "docker.io",
		"production.cloudflare.docker.com", "quay.io", "registry.test", "10.1.2.3/32", "fd00::1/128",
	}
	if got := second.PermittedNames(); !slices.Equal(got, wantNames) {
		t.Errorf("permitted names = %q, want %q", got, wantNames)
	}
}

// wantInitHint checks what ca init printed for the CA it wrote to dir: its
// ca_sha256, computed here from ca.crt, and the one-liner that sets up a
// node with it, as the proxy port's page at / shows it; and, if it
// replaced a CA, that it says so.
func wantInitHint(t *testing.T, stdout, dir string, replaced bool) {
	t.Helper()
	fp := pemFingerprint(t, filepath.Join(dir, "ca.crt"))
	want := []string{
		"wrote " + dir + " ca_sha256=" + fp + "\n",
		"\n  curl -fsS http://PROXY:3128/setup/docker | sh -s -- --ca-sha256 " + fp + "\n",
	}
	if replaced {
		want = append(want, "replaced the old CA")
	}
	for _, w := range want {
		if !strings.Contains(stdout, w) {
			t.Errorf("ca init printed:\n%s\nwant %q in it", stdout, w)
		}
	}
	if !replaced && strings.Contains(stdout, "replaced") {
		t.Errorf("ca init of a new CA printed:\n%s\nwant no word of replacing one", stdout)
	}
}

// TestCAPrintFingerprint: ca print writes the certificate, exactly, to
// stdout, and its fingerprint to stderr as one line, ca_sha256=HEX, as
// serve logs it (lowercase hex of the SHA-256 of the DER, computed here
// from the file), for DATA_DIR/ca and for a supplied CA alike. A setup
// script takes that HEX as its --ca-sha256 for the printed certificate.
func TestCAPrintFingerprint(t *testing.T) {
	dataDir := t.TempDir()
	dir := initCA(t, dataDir)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"data dir", []string{"--data-dir", dataDir}},
		{"supplied", []string{"--ca-cert", filepath.Join(dir, "ca.crt"), "--ca-key", filepath.Join(dir, "ca.key")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append([]string{"ca", "print"}, tc.args...)...)
			want, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
			if err != nil {
				t.Fatal(err)
			}
			fp := pemFingerprint(t, filepath.Join(dir, "ca.crt"))
			if code != 0 || stdout != string(want) || stderr != "ca_sha256="+fp+"\n" {
				t.Fatalf("ca print: exit code %d, stdout %q, stderr %q; want 0, the CA, and ca_sha256=%s", code, stdout, stderr, fp)
			}
			printed := filepath.Join(t.TempDir(), "ca.crt")
			if err := os.WriteFile(printed, []byte(stdout), 0o644); err != nil {
				t.Fatal(err)
			}
			hex := strings.TrimSpace(strings.TrimPrefix(stderr, "ca_sha256="))
			r := newNodeRoot(t, nil).runFile(t, "setup-docker.sh", "--proxy", "proxy.test", "--ca-file", printed, "--ca-sha256", hex)
			if r.code != 0 || !strings.Contains(r.stdout, "CA: ca_sha256="+hex+" from "+printed+" matches --ca-sha256") {
				t.Errorf("setup-docker.sh --ca-sha256 %s: %s", hex, r)
			}
		})
	}
}

// cutFingerprint checks that stderr of ca print ends with the ca_sha256
// line of the CA it printed, caPEM, and returns what comes before it.
func cutFingerprint(t *testing.T, caPEM, stderr string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(file, []byte(caPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	rest, ok := strings.CutSuffix(stderr, "ca_sha256="+pemFingerprint(t, file)+"\n")
	if !ok {
		t.Errorf("stderr of ca print = %q, want its last line ca_sha256=%s", stderr, pemFingerprint(t, file))
	}
	return rest
}

// TestCAInitFromEnv checks that ca init reads --registries and
// --name-constraints from the variables serve reads them from. t.Setenv
// forbids t.Parallel.
func TestCAInitFromEnv(t *testing.T) {
	t.Setenv("REGISTRIES", "quay.io")
	t.Setenv("REGPROXY_CA_NAME_CONSTRAINTS", "true")
	authority := loadDir(t, initCA(t, t.TempDir()))
	if got, want := authority.PermittedNames(), []string{"quay.io"}; !slices.Equal(got, want) {
		t.Errorf("permitted names = %q, want %q", got, want)
	}
}

func TestCAInitBadUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // what the error line must contain
	}{
		{"bad registry", []string{"--registries", "bad host!"}, "registries"},
		{"empty registries", []string{"--registries", " , "}, "registries"},
		{"stray argument", []string{"--registries", "docker.io", "quay.io"}, "quay.io"},
		{"unknown flag", []string{"--bogus"}, "bogus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := t.TempDir()
			code, stdout, stderr := runCLI(t, append([]string{"ca", "init", "--data-dir", dataDir}, tc.args...)...)
			wantUsageError(t, tc.want, code, stdout, stderr)
			if ok, _ := ca.Exists(filepath.Join(dataDir, "ca")); ok {
				t.Error("a CA was written despite the usage error")
			}
		})
	}
}

// TestServeNameConstraints checks how serve and ca print, which load the CA
// the same way, treat DATA_DIR/ca under --ca-name-constraints: reuse a
// constrained CA that covers the registries, and stop with exit 1 and the
// way out if it does not. (serve generates a constrained CA if there is
// none: TestServeChecksCA; ca print never generates: TestCAPrintNoCA.)
func TestServeNameConstraints(t *testing.T) {
	flag := "--ca-name-constraints"
	t.Run("constrained CA", func(t *testing.T) {
		dataDir := t.TempDir()
		initCA(t, dataDir, "--name-constraints", "--registries", "registry.test")
		pem := caPrintOK(t, "--data-dir", dataDir, flag, "--registries", "registry.test")
		authority := loadDir(t, filepath.Join(dataDir, "ca"))
		if string(authority.CertPEM()) != pem || !slices.Equal(authority.PermittedNames(), []string{"registry.test"}) {
			t.Errorf("printed CA permits %q, want a CA for registry.test", authority.PermittedNames())
		}
		if again := caPrintOK(t, "--data-dir", dataDir, flag, "--registries", "registry.test:5000"); again != pem {
			t.Error("a CA that covers the registries was not reused")
		}
	})
	t.Run("CA without constraints", func(t *testing.T) {
		dataDir := t.TempDir()
		initCA(t, dataDir)
		code, stdout, stderr := runCLI(t, serveArgsIn(dataDir, flag)...)
		wantRuntimeError(t, "no name constraints", code, stdout, stderr)
		wantRuntimeError(t, "regproxy ca init --name-constraints --force", code, stdout, stderr)
	})
	t.Run("CA constrained to other registries", func(t *testing.T) {
		dataDir := t.TempDir()
		initCA(t, dataDir, "--name-constraints", "--registries", "registry.test")
		code, stdout, stderr := runCLI(t, serveArgsIn(dataDir, flag, "--registries", "registry.test other.test")...)
		wantRuntimeError(t, "do not cover other.test;", code, stdout, stderr)
		wantRuntimeError(t, "regproxy ca init --name-constraints --force", code, stdout, stderr)
	})
}

// serveArgsIn is serveArgs with a given data directory.
func serveArgsIn(dataDir string, extra ...string) []string {
	return append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir}, extra...)
}

// caPrintOK runs ca print and returns the PEM it printed.
func caPrintOK(t *testing.T, args ...string) string {
	t.Helper()
	code, stdout, stderr := runCLI(t, append([]string{"ca", "print"}, args...)...)
	if code != 0 {
		t.Fatalf("ca print %q: exit code %d, stderr %q", args, code, stderr)
	}
	return stdout
}

// wantRuntimeError checks the contract for a failure at run time: exit code
// 1, nothing on stdout and one line on stderr that contains want.
func wantRuntimeError(t *testing.T, want string, code int, stdout, stderr string) {
	t.Helper()
	if code != 1 || stdout != "" {
		t.Errorf("exit code %d, stdout %q; want 1 and empty", code, stdout)
	}
	if lines := strings.Count(strings.TrimSpace(stderr), "\n") + 1; lines != 1 || !strings.Contains(stderr, want) {
		t.Errorf("stderr = %q, want one line containing %q", stderr, want)
	}
}

// TestSuppliedCAWarnings checks that a supplied CA is used as it is, with a
// warning for the registries its name constraints leave out, and one for
// --ca-name-constraints, which cannot change it.
func TestSuppliedCAWarnings(t *testing.T) {
	constrained := initCA(t, t.TempDir(), "--name-constraints", "--registries", "registry.test")
	open := initCA(t, t.TempDir())
	for _, tc := range []struct {
		name  string
		dir   string
		extra []string
		want  []string // lines of stderr, by what they contain
	}{
		{"covered", constrained, []string{"--registries", "registry.test"}, nil},
		{"not covered", constrained, []string{"--registries", "registry.test other.test"},
			[]string{"level=WARN", "do not cover", "other.test"}},
		{"unconstrained", open, []string{"--registries", "registry.test"}, nil},
		{"unconstrained under --ca-name-constraints", open, []string{"--registries", "registry.test", "--ca-name-constraints"},
			[]string{"level=WARN", "supplied CA has no name constraints"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"ca", "print", "--ca-cert", filepath.Join(tc.dir, "ca.crt"), "--ca-key", filepath.Join(tc.dir, "ca.key")}, tc.extra...)
			code, stdout, stderr := runCLI(t, args...)
			if want, _ := os.ReadFile(filepath.Join(tc.dir, "ca.crt")); code != 0 || stdout != string(want) {
				t.Fatalf("ca print: exit code %d, stderr %q; want 0 and the supplied CA", code, stderr)
			}
			wantLine(t, cutFingerprint(t, stdout, stderr), tc.want)
		})
	}
}

// wantLine checks that stderr (of ca print, without its ca_sha256 line) is
// empty if want is, and else is one line holding every string of want.
func wantLine(t *testing.T, stderr string, want []string) {
	t.Helper()
	if len(want) == 0 {
		if stderr != "" {
			t.Errorf("stderr = %q, want empty", stderr)
		}
		return
	}
	if strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("stderr has several lines, want one:\n%s", stderr)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr = %q, want it to contain %q", stderr, w)
		}
	}
}

// TestCAModeWarnings checks that loading DATA_DIR/ca warns of a key that
// others may read or write and of a directory that is not 0700, naming the
// file and its mode.
func TestCAModeWarnings(t *testing.T) {
	for _, tc := range []struct {
		name             string
		dirMode, keyMode os.FileMode
		want             []string // one line each, by what they contain
	}{
		{"as generated", 0o700, 0o600, nil},
		{"key readable by others", 0o700, 0o644, []string{"file=DIR/ca.key mode=0644 want=0600"}},
		{"key writable by group", 0o700, 0o620, []string{"file=DIR/ca.key mode=0620"}},
		{"dir listable", 0o755, 0o600, []string{"file=DIR mode=0755 want=0700"}},
		{"both", 0o750, 0o640, []string{"file=DIR mode=0750", "file=DIR/ca.key mode=0640"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := t.TempDir()
			dir := initCA(t, dataDir)
			if err := os.Chmod(filepath.Join(dir, "ca.key"), tc.keyMode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tc.dirMode); err != nil {
				t.Fatal(err)
			}
			code, stdout, stderr := runCLI(t, "ca", "print", "--data-dir", dataDir)
			if code != 0 {
				t.Fatalf("ca print: exit code %d, stderr %q", code, stderr)
			}
			stderr = cutFingerprint(t, stdout, stderr)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if len(tc.want) == 0 {
				lines = nil
				if stderr != "" {
					t.Errorf("stderr = %q, want empty", stderr)
				}
			}
			if len(lines) != len(tc.want) {
				t.Fatalf("stderr has %d lines, want %d:\n%s", len(lines), len(tc.want), stderr)
			}
			for i, w := range tc.want {
				w = strings.ReplaceAll(w, "DIR", dir)
				if !strings.Contains(lines[i], "level=WARN") || !strings.Contains(lines[i], w) {
					t.Errorf("line %d = %q, want a warning containing %q", i, lines[i], w)
				}
			}
		})
	}
}

// TestServeChecksCA checks the same two things at the start of a real
// serve process: the mode warning, and a name-constrained CA generated
// under --ca-name-constraints, served on /ca.crt and logged by its
// fingerprint.
func TestServeChecksCA(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dataDir, "ca"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The later --data-dir wins over startDaemon's own.
	d := startDaemon(t, "--data-dir", dataDir, "--ca-name-constraints", "--registries", "registry.test 10.1.2.3")
	code, body, err := d.get("/ca.crt")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /ca.crt: %d, %v", code, err)
	}
	authority := loadDir(t, filepath.Join(dataDir, "ca"))
	if string(body) != string(authority.CertPEM()) {
		t.Error("/ca.crt is not the CA in DATA_DIR/ca")
	}
	if got, want := authority.PermittedNames(), []string{"registry.test", "10.1.2.3/32"}; !slices.Equal(got, want) {
		t.Errorf("served CA permits %q, want %q", got, want)
	}
	log := d.log.String()
	for _, want := range []string{
		`"msg":"CA file is open to other users","file":"` + filepath.Join(dataDir, "ca") + `","mode":"0755","want":"0700"`,
		`"ca_sha256":"` + fingerprint(authority) + `"`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
}
