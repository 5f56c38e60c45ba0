package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// warmTimeout bounds one regproxy warm run.
const warmTimeout = 2 * time.Minute

// runWarm runs the regproxy binary's warm through s's daemon, with
// HTTPS_PROXY pointing nowhere: warm must use --proxy alone.
func runWarm(t *testing.T, s *hubSetup, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd, cancel := timedCmd(t.Context(), warmTimeout, binary, append([]string{"warm", "--proxy", s.ProxyURL()}, args...)...)
	defer cancel()
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(),
		"HTTPS_PROXY=http://127.0.0.1:9", "HTTP_PROXY=http://127.0.0.1:9"}
	var out, errOut syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	killLeftovers(t, "regproxy warm", cmd)
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatalf("regproxy warm: %v\n%s", err, errOut.String())
	}
	return code, out.String(), errOut.String()
}

// caSHA256 is the fingerprint of s's CA as serve logs it: the SHA-256 of
// its DER, in hex.
func caSHA256(t *testing.T, s *hubSetup) string {
	t.Helper()
	b, err := os.ReadFile(s.caFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("no PEM in %s", s.caFile)
	}
	sum := sha256.Sum256(block.Bytes)
	return hex.EncodeToString(sum[:])
}

// sizeRE matches the sizes humanSize writes, but "0 B".
var sizeRE = regexp.MustCompile(`\b[1-9][0-9]*(\.[0-9])? (B|KiB|MiB|GiB)\b`)

// normalize makes warm's output comparable with golden lines: the
// registry's random port is REGISTRY's, sizes other than 0 B are SIZE.
func normalize(s *hubSetup, out string) []string {
	out = strings.ReplaceAll(out, s.up.Host, "REGISTRY")
	var lines []string
	for line := range strings.Lines(sizeRE.ReplaceAllString(out, "SIZE")) {
		lines = append(lines, strings.TrimRight(line, "\n"))
	}
	return lines
}

func wantLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n%s\nwant:\n%s", what, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestWarmThenPull warms the image and the multi-arch index through a real
// regproxy, then pulls both with crane: no blob reaches upstream, and no
// manifest by digest either. A second warm finds everything cached. Output is
// checked line by line (--parallel 1 keeps the order).
func TestWarmThenPull(t *testing.T) {
	t.Parallel()
	s := newHubSetup(t)
	pin := caSHA256(t, s)
	images := []string{s.Image.Ref(s), s.Index.Ref(s)}

	code, stdout, stderr := runWarm(t, s, append([]string{"--ca-sha256", strings.ToUpper(pin), "--parallel", "1"}, images...)...)
	if code != 0 {
		t.Fatalf("warm: exit %d\n%s%s", code, stdout, stderr)
	}
	wantLines(t, "first warm, stderr", normalize(s, stderr), []string{
		"REGISTRY/public/app:v1: 1 manifest, 4 blobs, SIZE",
		"REGISTRY/public/app:v1: warmed 1 manifest, 4 blobs, SIZE: SIZE fetched upstream, 0 B already cached",
		"REGISTRY/public/multi:v1: 3 manifests, 5 blobs, SIZE",
		"REGISTRY/public/multi:v1: warmed 3 manifests, 5 blobs, SIZE: SIZE fetched upstream, 0 B already cached",
	})
	wantLines(t, "first warm, stdout", normalize(s, stdout), []string{
		"warmed 2 of 2 images; downloaded 9 blobs, SIZE: SIZE fetched upstream, 0 B already cached",
	})
	if got := s.up.Count("GET blob"); got != 9 {
		t.Errorf("first warm: %d blob GETs upstream; want 9, one per blob", got)
	}

	blobs, manifests := s.BlobFetches(), s.ManifestRequests()
	if n := cranePullAll(t, s); n != 9 {
		t.Errorf("crane read %d blobs; want the 9 warm downloaded", n)
	}
	s.AssertNoBlobFetchesSince(t, blobs, "crane pull after warm")
	// Tag records are kept per Accept header. crane asks for the index's
	// tag accepting index types only, where warm accepted every manifest
	// type, so that tag may cost one GET upstream; nothing else may.
	if n := s.ManifestRequests() - manifests; n > 1 {
		t.Errorf("crane pull after warm: %d manifest requests upstream; want at most 1, for the index's tag", n)
	}

	code, stdout, stderr = runWarm(t, s, append([]string{"--ca-sha256", pin, "--parallel", "1"}, images...)...)
	if code != 0 {
		t.Fatalf("second warm: exit %d\n%s%s", code, stdout, stderr)
	}
	wantLines(t, "second warm, stderr", normalize(s, stderr), []string{
		"REGISTRY/public/app:v1: 1 manifest, 4 blobs, SIZE",
		"REGISTRY/public/app:v1: warmed 1 manifest, 4 blobs, SIZE: 0 B fetched upstream, SIZE already cached",
		"REGISTRY/public/multi:v1: 3 manifests, 5 blobs, SIZE",
		"REGISTRY/public/multi:v1: warmed 3 manifests, 5 blobs, SIZE: 0 B fetched upstream, SIZE already cached",
	})
	wantLines(t, "second warm, stdout", normalize(s, stdout), []string{
		"warmed 2 of 2 images; downloaded 9 blobs, SIZE: 0 B fetched upstream, SIZE already cached",
	})
	s.AssertNoBlobFetchesSince(t, blobs, "second warm")
}

// TestWarmMissingImage: an image upstream does not have fails the run
// (exit 1, listed), and the others of the list are warmed all the same.
// Without --ca-sha256, warm says which CA it trusted. The list comes from
// --file, with comments and blank lines, and an argument.
func TestWarmMissingImage(t *testing.T) {
	t.Parallel()
	s := newHubSetup(t)
	list := "# rollout of today\n\n" + s.Image.Ref(s) + "\n  " + s.up.Host + "/public/app:v404   # not pushed\n"
	file := filepath.Join(t.TempDir(), "images.txt")
	if err := os.WriteFile(file, []byte(list), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runWarm(t, s, "--file", file, s.Index.Ref(s))
	if code != 1 {
		t.Fatalf("warm with a missing image: exit %d; want 1\n%s%s", code, stdout, stderr)
	}
	lines := normalize(s, stdout)
	if len(lines) != 2 || lines[0] != "warmed 2 of 3 images; downloaded 9 blobs, SIZE: SIZE fetched upstream, 0 B already cached" ||
		!strings.HasPrefix(lines[1], "failed: REGISTRY/public/app:v404: ") || !strings.Contains(lines[1], "MANIFEST_UNKNOWN") {
		t.Errorf("stdout:\n%s\nwant the summary, then the missing image's failure (MANIFEST_UNKNOWN)", stdout)
	}
	errLines := normalize(s, stderr)
	trust := "regproxy warm: trusting the CA of " + s.ProxyURL() + ", ca_sha256=" + caSHA256(t, s) + " "
	if len(errLines) == 0 || !strings.HasPrefix(errLines[0], trust) {
		t.Errorf("stderr begins %q; want %q…", errLines, trust)
	}
	if last := errLines[len(errLines)-1]; last != "regproxy: 1 of 3 images failed" {
		t.Errorf("stderr ends %q; want the count of failures", last)
	}
	if !slices.ContainsFunc(errLines, func(l string) bool { return strings.HasPrefix(l, "REGISTRY/public/app:v404: FAILED: ") }) {
		t.Errorf("stderr has no FAILED line for the missing image:\n%s", stderr)
	}

	blobs := s.BlobFetches()
	cranePullAll(t, s)
	s.AssertNoBlobFetchesSince(t, blobs, "crane pull of the images warmed beside a missing one")
}

// TestWarmWrongCA: a CA whose fingerprint is not --ca-sha256 is refused
// before anything is pulled.
func TestWarmWrongCA(t *testing.T) {
	t.Parallel()
	s := newHubSetup(t)
	wrong := strings.Repeat("ab", 32)
	code, stdout, stderr := runWarm(t, s, "--ca-sha256", wrong, s.Image.Ref(s))
	if code != 1 || stdout != "" {
		t.Errorf("warm with a wrong --ca-sha256: exit %d, stdout %q; want 1 and nothing", code, stdout)
	}
	want := "regproxy: refusing the CA of " + s.ProxyURL() + ": its ca_sha256=" + caSHA256(t, s) + " is not --ca-sha256 " + wrong + "\n"
	if stderr != want {
		t.Errorf("stderr = %q; want %q", stderr, want)
	}
	if n := s.up.Total(); n != 0 {
		t.Errorf("%d requests reached upstream; want none", n)
	}
	if s.d.logged(0, s.isRequest) {
		t.Error("regproxy logged a registry request; want only the fetch of /ca.crt")
	}
}

// TestWarmAuthFile: the private image needs the hub account; warm has it
// only from --auth-file.
func TestWarmAuthFile(t *testing.T) {
	t.Parallel()
	s := newHubSetup(t)
	ref := s.PrivateImage.Ref(s)
	if code, stdout, stderr := runWarm(t, s, ref); code != 1 || !strings.Contains(stdout, "failed: "+ref) {
		t.Errorf("anonymous warm of a private image: exit %d; want 1 and a failure\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr := runWarm(t, s, "--auth-file", writeDockerConfig(t, s.up.Host), ref)
	if code != 0 || !strings.HasPrefix(stdout, "warmed 1 of 1 image; downloaded 4 blobs") {
		t.Errorf("warm with --auth-file: exit %d\n%s%s", code, stdout, stderr)
	}
}

// TestWarmUsage: mistakes are usage errors, exit 2 and one line, before
// anything is fetched (--proxy names a port where nothing listens).
func TestWarmUsage(t *testing.T) {
	proxy := []string{"warm", "--proxy", "http://127.0.0.1:9"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no proxy", []string{"warm", "alpine"}, "--proxy"},
		{"proxy not a URL", []string{"warm", "--proxy", "127.0.0.1:3128", "alpine"}, "--proxy"},
		{"proxy with a path", []string{"warm", "--proxy", "http://127.0.0.1:3128/x", "alpine"}, "--proxy"},
		{"no images", proxy, "no images"},
		{"bad reference", append(slices.Clone(proxy), "Registry.test/UPPER:v1"), `"Registry.test/UPPER:v1"`},
		{"short pin", append(slices.Clone(proxy), "--ca-sha256", "abcd", "alpine"), "--ca-sha256"},
		{"pin not hex", append(slices.Clone(proxy), "--ca-sha256", strings.Repeat("zz", 32), "alpine"), "--ca-sha256"},
		{"parallel zero", append(slices.Clone(proxy), "--parallel", "0", "alpine"), "--parallel"},
		{"parallel not a number", append(slices.Clone(proxy), "--parallel", "many", "alpine"), "--parallel"},
		{"missing file", append(slices.Clone(proxy), "--file", "/nonexistent/images.txt"), "--file"},
		{"missing auth file", append(slices.Clone(proxy), "--auth-file", "/nonexistent/config.json", "alpine"), "--auth-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tc.args...)
			wantUsageError(t, tc.want, code, stdout, stderr)
		})
	}
}

// TestWarmProxyDown: a proxy that does not answer is a failure (exit 1)
// that names it.
func TestWarmProxyDown(t *testing.T) {
	code, stdout, stderr := runCLI(t, "warm", "--proxy", "http://127.0.0.1:9", "alpine")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "127.0.0.1:9") {
		t.Errorf("warm through a closed port: exit %d, stdout %q, stderr %q; want 1 and the address", code, stdout, stderr)
	}
}

// TestWarmTerminal runs warm on a terminal (script(1) gives it a pty):
// progress bars, drawn with cursor movements, then each image's line
// above them and the summary.
func TestWarmTerminal(t *testing.T) {
	t.Parallel()
	script, err := exec.LookPath("script")
	if err != nil {
		t.Fatalf("script(1), of util-linux, is needed: %v", err)
	}
	s := newHubSetup(t)
	warm := strings.Join([]string{binary, "warm", "--proxy", s.ProxyURL(), "--ca-sha256", caSHA256(t, s), s.Image.Ref(s), s.Index.Ref(s)}, " ")
	cmd, cancel := timedCmd(t.Context(), warmTimeout, script, "-q", "-e", "-c", "stty cols 120 rows 40; exec "+warm, "/dev/null")
	defer cancel()
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "TERM=xterm"}
	out, err := cmd.Output()
	killLeftovers(t, "script", cmd)
	if err != nil {
		t.Fatalf("warm on a terminal: %v\n%q", err, out)
	}
	text := strings.ReplaceAll(string(out), "\r\n", "\n")
	for _, want := range []string{
		"\x1b[", // the bars' cursor movements
		s.Image.Ref(s) + ": warmed 1 manifest, 4 blobs, ",
		s.Index.Ref(s) + ": warmed 3 manifests, 5 blobs, ",
		"warmed 2 of 2 images; downloaded 9 blobs, ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("terminal output has no %q:\n%q", want, text)
		}
	}
	if strings.Index(text, "warmed 2 of 2") < strings.LastIndex(text, "\x1b[") {
		t.Errorf("the summary comes before the last of the bars:\n%q", text)
	}
}
