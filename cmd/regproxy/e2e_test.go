package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// binary is the regproxy executable that TestMain builds for the end-to-end
// tests, and binaryVersion the version stamped into it.
var binary string

const binaryVersion = "e2e-test"

// TestMain builds the binary once, runs the tests with an environment free
// of regproxy's variables, and then checks that no goroutine was leaked by
// the in-process runs.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "regproxy-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "regproxy")
	if err := build(binary); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	clearEnv()
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// build compiles this package to out, with the race detector when the test
// binary has it, so that a data race in the daemon fails its exit status.
func build(out string) error {
	args := []string{"build", "-ldflags", "-X main.version=" + binaryVersion, "-o", out}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				args = append(args, "-race")
			}
		}
	}
	cmd := exec.Command("go", append(args, ".")...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// clearEnv removes the variables that serve reads, so that a developer's
// shell cannot change what the in-process tests see.
func clearEnv() {
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "REGPROXY_"), strings.HasPrefix(name, "MANIFEST_CACHE_"), name == "REGISTRIES", name == "AUTH_REGISTRIES",
			name == "CACHE_MAX_SIZE":
			os.Unsetenv(name)
		}
	}
}

// daemon is a regproxy serve subprocess.
type daemon struct {
	addr   string      // where it listens, from its "regproxy serving" line
	log    *syncBuffer // stdout and stderr: the JSON log
	exited chan struct{}
	err    error // Wait's result; read after exited is closed
}

// startDaemon runs regproxy serve on a port of its choosing and waits until
// it is healthy. It is stopped with SIGTERM when the test ends, and must
// then exit 0 within stopTimeout.
func startDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	return startDaemonEnv(t, nil, args...)
}

// startDaemonEnv is startDaemon with extra environment ("NAME=value").
func startDaemonEnv(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	d := &daemon{log: &syncBuffer{}, exited: make(chan struct{})}
	cmd := exec.Command(binary, append([]string{"serve", "--listen", "127.0.0.1:0",
		"--data-dir", t.TempDir(), "--log-format", "json"}, args...)...)
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + t.TempDir(),
		// regproxy must never send its own traffic through a proxy of its
		// environment (nodes often share one environment file with it):
		// these point at the discard port, where nothing listens.
		"HTTPS_PROXY=http://127.0.0.1:9", "HTTP_PROXY=http://127.0.0.1:9",
	}, env...)
	cmd.Stdout, cmd.Stderr = d.log, d.log
	startProc(t, "regproxy", cmd, false, d.exited, &d.err)
	t.Cleanup(func() { d.stop(t, cmd.Process) })
	d.addr = d.waitListening(t)
	d.waitHealthy(t)
	return d
}

// stop sends p, d's process, SIGTERM, kills it if it has not exited within
// stopTimeout, and checks that it exited 0 after a clean shutdown.
func (d *daemon) stop(t *testing.T, p *os.Process) {
	if d.process(p.Pid).stop(t, stopTimeout) {
		if d.err != nil {
			t.Errorf("regproxy after SIGTERM: %v, want exit status 0", d.err)
		}
		if !d.logged(0, func(e logEntry) bool { return e.Msg == "regproxy stopped" }) {
			t.Error(`no "regproxy stopped" line after SIGTERM`)
		}
	}
	if t.Failed() {
		t.Logf("regproxy log:\n%s", d.log)
	}
}

// process is d as the process helpers see it; pid 0 for waits alone.
func (d *daemon) process(pid int) proc {
	return proc{name: "regproxy", pid: pid, exited: d.exited, err: &d.err}
}

// waitListening reads the listen address from the start-up log line.
func (d *daemon) waitListening(t *testing.T) string {
	t.Helper()
	var addr string
	d.process(0).waitReady(t, pollTries*pollInterval, pollInterval, func(context.Context) error {
		for _, e := range d.entries(0) {
			if e.Msg == "regproxy serving" && e.Listen != "" {
				addr = e.Listen
				return nil
			}
		}
		return errors.New(`no "regproxy serving" line`)
	})
	return addr
}

func (d *daemon) waitHealthy(t *testing.T) {
	t.Helper()
	d.process(0).waitReady(t, pollTries*pollInterval, pollInterval, func(context.Context) error {
		code, _, err := d.get("/healthz")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("GET /healthz: %d", code)
		}
		return err
	})
}

// get fetches a page of the proxy port itself.
func (d *daemon) get(path string) (int, []byte, error) {
	c := &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		Timeout:   5 * time.Second,
	}
	resp, err := c.Get("http://" + d.addr + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// logEntry is the part of a JSON log line the tests look at.
type logEntry struct {
	Msg     string `json:"msg"`
	Listen  string `json:"listen"`
	Version string `json:"version"`
	Method  string `json:"method"`
	Host    string `json:"host"`
	Kind    string `json:"kind"`
	Repo    string `json:"repo"`
	Ref     string `json:"ref"`
	Outcome string `json:"outcome"`
	Status  int    `json:"status"`
	Bytes   int64  `json:"bytes"`
	BytesIn int64  `json:"bytes_in"`
}

// entries parses the log's JSON lines, skipping the first skip lines.
func (d *daemon) entries(skip int) []logEntry {
	var out []logEntry
	for i, line := range strings.Split(d.log.String(), "\n") {
		var e logEntry
		if i >= skip && json.Unmarshal([]byte(line), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// lines returns how many complete lines the log has, for entries(skip).
func (d *daemon) lines() int { return strings.Count(d.log.String(), "\n") }

// logged reports whether a line after the first skip matches.
func (d *daemon) logged(skip int, match func(logEntry) bool) bool {
	for _, e := range d.entries(skip) {
		if match(e) {
			return true
		}
	}
	return false
}

// waitLogged waits until a line after the first skip matches. A request's
// access-log line is written after its response, so it may trail the
// client's exit.
func (d *daemon) waitLogged(skip int, match func(logEntry) bool) bool {
	for range pollTries {
		if d.logged(skip, match) {
			return true
		}
		time.Sleep(pollInterval)
	}
	return false
}

func TestBinaryVersion(t *testing.T) {
	t.Parallel()
	cmd, cancel := timedCmd(t.Context(), 30*time.Second, binary, "version")
	defer cancel()
	out, err := cmd.CombinedOutput()
	if got, want := string(out), "regproxy "+binaryVersion+"\n"; err != nil || got != want {
		t.Errorf("regproxy version = %q, %v; want %q", got, err, want)
	}
}

// TestRefusals sends requests a proxy must not act on, over raw TCP so that
// no client library rewrites them.
func TestRefusals(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	bystander := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	t.Cleanup(bystander.Close)
	d := startDaemon(t, "--registries", "registry.test")

	for _, tc := range []struct {
		name, request string
		want          int
	}{
		// goproxy would dial "registry.test:80"; the target must name a port.
		{"CONNECT without port", "CONNECT registry.test HTTP/1.1\r\nHost: registry.test\r\n\r\n", http.StatusBadRequest},
		// Absolute-URI requests would make regproxy an open proxy.
		{"plain HTTP to a name", "GET http://example.invalid/ HTTP/1.1\r\nHost: example.invalid\r\n\r\n", http.StatusForbidden},
		{"plain HTTP to a live server", "GET " + bystander.URL + "/ HTTP/1.1\r\nHost: " + bystander.Listener.Addr().String() + "\r\n\r\n", http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawStatus(t, d.addr, tc.request); got != tc.want {
				t.Errorf("status %d, want %d", got, tc.want)
			}
		})
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the plain-HTTP request reached its target %d times, want 0", n)
	}
	for _, status := range []int{http.StatusBadRequest, http.StatusForbidden} {
		if !d.waitLogged(0, func(e logEntry) bool { return e.Outcome == "DENIED" && e.Status == status }) {
			t.Errorf(`no access-log line with "outcome":"DENIED","status":%d`, status)
		}
	}
}

// TestTunnel checks that a CONNECT to a host off the allow-list is tunnelled
// untouched: the client sees the upstream's own certificate, the tunnel is
// dialled with --resolve, not through the daemon's HTTPS_PROXY, and it is
// logged when it ends, with the bytes it relayed.
func TestTunnel(t *testing.T) {
	t.Parallel()
	up := testupstream.Start(t)
	d := startDaemon(t, "--registries", "other.test", "--resolve", up.Resolve())
	c := &http.Client{
		Transport: &http.Transport{
			Proxy:             http.ProxyURL(&url.URL{Scheme: "http", Host: d.addr}),
			TLSClientConfig:   &tls.Config{RootCAs: up.CertPool()}, // not regproxy's CA
			DisableKeepAlives: true,
		},
		Timeout: 10 * time.Second,
	}
	resp, err := c.Get("https://" + up.Host + "/v2/")
	if err != nil {
		t.Fatalf("GET /v2/ through the tunnel: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || up.Count("GET ping") != 1 {
		t.Errorf("GET /v2/: %s, upstream pings %d; want 200 and 1", resp.Status, up.Count("GET ping"))
	}
	// The client closed the tunnel (no keep-alive): its line says what
	// went each way, the TLS handshake and the request at least.
	if !d.waitLogged(0, func(e logEntry) bool {
		return e.Outcome == "TUNNEL" && e.Host == up.Host && e.Bytes > 0 && e.BytesIn > 0
	}) {
		t.Errorf(`no "outcome":"TUNNEL" line for %s with bytes each way`, up.Host)
	}
}

// rawStatus writes request to the proxy port and returns the status code of
// the answer.
func rawStatus(t *testing.T, addr, request string) int {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
