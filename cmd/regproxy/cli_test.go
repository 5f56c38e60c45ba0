package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// runTimeout bounds one in-process run. A bad flag returns at once; a run
// still going after this has started serving, which these tests forbid.
const runTimeout = 10 * time.Second

// runCLI runs the command line in-process and returns the exit code and
// what it wrote. It fails the test if run has not returned in runTimeout.
//
// urfave/cli v2 writes to package-level flags (cli.HelpFlag, cli.VersionFlag)
// in every Run, so two runs at once race: tests that call runCLI, and their
// subtests, do not use t.Parallel.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(append([]string{"regproxy"}, args...), &out, &errOut) }()
	select {
	case code = <-done:
		return code, out.String(), errOut.String()
	case <-time.After(runTimeout):
		// The buffers are still being written to: do not read them.
		t.Fatalf("regproxy %s: still running after %v (did it start serving?)", strings.Join(args, " "), runTimeout)
		return 0, "", ""
	}
}

// serveArgs are serve flags that keep a run that wrongly starts serving
// harmless: a random loopback port and a data dir of the test's own.
func serveArgs(t *testing.T, extra ...string) []string {
	return append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", t.TempDir()}, extra...)
}

// wantUsageError checks the contract for a bad flag: exit code 2, nothing on
// stdout (no help dump) and exactly one line on stderr, naming the flag.
func wantUsageError(t *testing.T, flag string, code int, stdout, stderr string) {
	t.Helper()
	if code != 2 {
		t.Errorf("exit code = %d, want 2; stderr:\n%s", code, stderr)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want empty", stdout)
	}
	var lines []string
	for l := range strings.Lines(stderr) {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("stderr has %d non-empty lines, want 1:\n%s", len(lines), stderr)
	}
	if !strings.Contains(lines[0], flag) {
		t.Errorf("stderr = %q, want it to name %q", lines[0], flag)
	}
}

// TestVersion checks that the version command and the version flags
// print the same line.
func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version", "-v"} {
		code, stdout, stderr := runCLI(t, arg)
		if code != 0 || stderr != "" {
			t.Errorf("regproxy %s: exit code %d, stderr %q; want 0 and empty", arg, code, stderr)
		}
		if got, want := stdout, "regproxy "+version+"\n"; got != want {
			t.Errorf("regproxy %s: stdout = %q, want %q", arg, got, want)
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		flag string // what the error line must contain
	}{
		{"manifest-ttl not a duration", []string{"--manifest-ttl", "abc"}, "manifest-ttl"},
		{"fill-timeout negative", []string{"--fill-timeout", "-1s"}, "fill-timeout"},
		{"log-format unknown", []string{"--log-format", "xml"}, "log-format"},
		{"log-level unknown", []string{"--log-level", "loud"}, "log-level"},
		{"resolve without ports", []string{"--resolve", "nope"}, "resolve"},
		{"registries bad host", []string{"--registries", "bad host!"}, "registries"},
		{"upstream-ca missing file", []string{"--upstream-ca", "/nonexistent"}, "upstream-ca"},
		{"upstream-proxy not http", []string{"--upstream-proxy", "socks5://proxy.test:1080"}, "upstream-proxy"},
		{"ca-cert without ca-key", []string{"--ca-cert", "x"}, "ca-cert"},
		{"ca-key without ca-cert", []string{"--ca-key", "x"}, "ca-key"},
		{"unknown flag", []string{"--bogus"}, "bogus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, serveArgs(t, tc.args...)...)
			wantUsageError(t, tc.flag, code, stdout, stderr)
		})
	}
}

// TestUpstreamProxyRedacted checks that a rejected --upstream-proxy does
// not echo its password.
func TestUpstreamProxyRedacted(t *testing.T) {
	code, stdout, stderr := runCLI(t, serveArgs(t, "--upstream-proxy", "http://user:s3cret@proxy.test")...)
	wantUsageError(t, "upstream-proxy", code, stdout, stderr)
	if strings.Contains(stderr, "s3cret") {
		t.Errorf("stderr %q shows the password", stderr)
	}
}

// TestBadCommands checks that a mistyped command or a stray argument is a
// usage error too, not urfave/cli's exit code 3 or a silently ignored word.
func TestBadCommands(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // what the error line must contain
	}{
		{"unknown command", []string{"bogus"}, "bogus"},
		{"unknown ca command", []string{"ca", "bogus"}, "bogus"},
		{"unquoted registries list", serveArgs(t, "--registries", "docker.io", "quay.io"), "quay.io"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tc.args...)
			wantUsageError(t, tc.want, code, stdout, stderr)
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{nil, {"ca"}, {"help", "serve"}} {
		code, stdout, stderr := runCLI(t, args...)
		if code != 0 || stderr != "" || !strings.Contains(stdout, "USAGE:") {
			t.Errorf("regproxy %q: exit code %d, stderr %q, stdout %q; want 0 and help on stdout", args, code, stderr, stdout)
		}
	}
}

// TestBadFlagFromEnv checks that a bad value from the environment is
// reported by its flag name, under the REGPROXY_ name and the legacy one.
// t.Setenv forbids t.Parallel.
func TestBadFlagFromEnv(t *testing.T) {
	for _, name := range []string{"REGPROXY_MANIFEST_TTL", "MANIFEST_CACHE_DEFAULT_TIME"} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(name, "abc")
			code, stdout, stderr := runCLI(t, serveArgs(t)...)
			wantUsageError(t, "manifest-ttl", code, stdout, stderr)
		})
	}
}

func TestCAPrint(t *testing.T) {
	dir := t.TempDir()
	initCA(t, dir)
	caPrint := func() string {
		t.Helper()
		code, stdout, stderr := runCLI(t, "ca", "print", "--data-dir", dir)
		if code != 0 || cutFingerprint(t, stdout, stderr) != "" {
			t.Fatalf("ca print: exit code %d, stderr %q; want 0 and only the ca_sha256 line", code, stderr)
		}
		return stdout
	}
	first := caPrint()
	block, rest := pem.Decode([]byte(first))
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("ca print = %q, want one PEM CERTIFICATE", first)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.IsCA {
		t.Error("printed certificate is not a CA")
	}
	if second := caPrint(); second != first {
		t.Errorf("second ca print differs from the first:\n%s\nwant:\n%s", second, first)
	}
	for file, want := range map[string]os.FileMode{"ca": 0o700 | os.ModeDir, "ca/ca.key": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode(); got != want {
			t.Errorf("%s mode = %v, want %v", file, got, want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want time.Duration // 0: rejected
	}{
		{"1d", 24 * time.Hour},
		{"7d", 7 * 24 * time.Hour},
		{"90s", 90 * time.Second},
		{"1h30m", 90 * time.Minute},
		{"106751d", 106751 * 24 * time.Hour}, // the most a Duration holds
		{"106752d", 0},                       // would wrap negative
		{"0", 0},
		{"0s", 0},
		{"0d", 0},
		{"-1h", 0},
		{"-1d", 0},
		{"1x", 0},
		{"1.5d", 0},
		{"d", 0},
		{"", 0},
	} {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			got, err := parseDuration(tc.in)
			if tc.want == 0 {
				if err == nil {
					t.Errorf("parseDuration(%q) = %v, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("parseDuration(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestSplitList(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"a b,c\td", []string{"a", "b", "c", "d"}},
		{"docker.io, quay.io\n ghcr.io:443", []string{"docker.io", "quay.io", "ghcr.io:443"}},
		{"a,,b", []string{"a", "b"}},
		{" , \t", nil},
		{"", nil},
	} {
		if got := splitList(tc.in); len(got) != len(tc.want) || (len(got) > 0 && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("splitList(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseResolve(t *testing.T) {
	t.Parallel()
	got, err := parseResolve([]string{"Registry.Test:443=127.0.0.1:8443", "cdn.test:443=[::1]:9443"})
	want := map[string]string{"registry.test:443": "127.0.0.1:8443", "cdn.test:443": "[::1]:9443"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("parseResolve = %v, %v; want %v", got, err, want)
	}
	if got, err := parseResolve(nil); err != nil || len(got) != 0 {
		t.Errorf("parseResolve(nil) = %v, %v; want empty", got, err)
	}
	for _, bad := range []string{
		"nope",
		"a:1",           // no "="
		"a=1.2.3.4:5",   // no port on the left
		"a:1=1.2.3.4",   // no port on the right
		":1=1.2.3.4:5",  // no host on the left
		"a:1=:5",        // no host on the right
		"a:0=1.2.3.4:5", // port out of range
		"a:1=1.2.3.4:65536",
		"a:x=1.2.3.4:5",
	} {
		if got, err := parseResolve([]string{"ok.test:1=1.2.3.4:5", bad}); err == nil {
			t.Errorf("parseResolve(%q) = %v, want an error", bad, got)
		} else if !strings.Contains(err.Error(), bad) {
			t.Errorf("parseResolve(%q) error %q does not quote the entry", bad, err)
		}
	}
}
