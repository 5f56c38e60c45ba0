package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// These tests send regproxy serve the signals an init system sends, and
// check what a stop leaves behind: the exit status, the responses in
// flight, and DATA_DIR/cache/tmp.

// signalled is a regproxy serve process that the test stops itself.
type signalled struct {
	*daemon
	proc    *os.Process
	dataDir string
}

// startSignalled runs regproxy serve on dataDir (so that a test can look at
// the cache, or start another process on it) and waits until it is healthy.
// Unlike startDaemon it leaves stopping to the test; one still running
// when the test ends is killed.
func startSignalled(t *testing.T, dataDir string, args ...string) *signalled {
	t.Helper()
	return startSignalledEnv(t, dataDir, nil, args...)
}

// startSignalledEnv is startSignalled with extra environment ("NAME=value").
func startSignalledEnv(t *testing.T, dataDir string, env []string, args ...string) *signalled {
	t.Helper()
	d := &daemon{log: &syncBuffer{}, exited: make(chan struct{})}
	cmd := exec.Command(binary, append([]string{"serve", "--listen", "127.0.0.1:0",
		"--data-dir", dataDir, "--log-format", "json"}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		select {
		case <-d.exited:
		default:
			cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			t.Logf("regproxy log:\n%s", d.log)
		}
	})
	d.addr = d.waitListening(t)
	d.waitHealthy(t)
	return &signalled{daemon: d, proc: cmd.Process, dataDir: dataDir}
}

// signal sends sig and returns when it was sent.
func (s *signalled) signal(t *testing.T, sig os.Signal) time.Time {
	t.Helper()
	if err := s.proc.Signal(sig); err != nil {
		t.Fatalf("%v: %v", sig, err)
	}
	return time.Now()
}

// waitExit waits up to limit for the process to exit and returns how long
// it took since from.
func (s *signalled) waitExit(t *testing.T, from time.Time, limit time.Duration) time.Duration {
	t.Helper()
	select {
	case <-s.exited:
		return time.Since(from)
	case <-time.After(limit):
		t.Fatalf("regproxy still running %v after the signal", limit)
		return 0
	}
}

// wantCleanExit checks exit status 0 and the closing log line.
func (s *signalled) wantCleanExit(t *testing.T) {
	t.Helper()
	if s.err != nil {
		t.Errorf("regproxy exited with %v, want status 0", s.err)
	}
	if !s.logged(0, func(e logEntry) bool { return e.Msg == "regproxy stopped" }) {
		t.Error(`no "regproxy stopped" line`)
	}
}

// waitShuttingDown waits for the line that says the first signal arrived.
func (s *signalled) waitShuttingDown(t *testing.T) {
	t.Helper()
	if !s.waitLogged(0, func(e logEntry) bool { return e.Msg == "shutting down" }) {
		t.Fatal(`no "shutting down" line after the signal`)
	}
}

// spool lists DATA_DIR/cache/tmp.
func (s *signalled) spool(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(s.dataDir, "cache", "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// cached returns the committed file of blob d, or nil if there is none.
func (s *signalled) cached(t *testing.T, d digest.Digest) []byte {
	t.Helper()
	hex := d.Encoded()
	b, err := os.ReadFile(filepath.Join(s.dataDir, "cache", "blobs", d.Algorithm().String(), hex[:2], hex))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// client is an HTTP client whose proxy is the daemon and whose only root
// is regproxy's CA.
func (s *signalled) client(t *testing.T) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(s.dataDir, "ca", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	return &http.Client{Transport: &http.Transport{
		Proxy:             http.ProxyURL(&url.URL{Scheme: "http", Host: s.addr}),
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		DisableKeepAlives: true,
	}}
}

// blobUpstream starts a registry holding one layer of size bytes, and
// returns it with the layer's digest and bytes.
func blobUpstream(t *testing.T, size int64) (*testupstream.Upstream, digest.Digest, []byte) {
	t.Helper()
	up := testupstream.Start(t)
	img := up.RandomImage(t, 1, size)
	up.Push(t, "r", "t", img)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	h, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return up, digest.Digest(h.String()), b
}

// trickle is a Fault that sends a blob in chunks with a pause after each.
func trickle(blob []byte, chunks int, pause time.Duration) testupstream.Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET blob" {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(blob)))
		step := (len(blob) + chunks - 1) / chunks
		for off := 0; off < len(blob); off += step {
			if _, err := w.Write(blob[off:min(off+step, len(blob))]); err != nil {
				return true
			}
			w.(http.Flusher).Flush()
			select {
			case <-time.After(pause):
			case <-r.Context().Done():
				return true
			}
		}
		return true
	}
}

// stall is a Fault that sends the first n bytes of a blob and then nothing,
// until regproxy hangs up or the test ends.
func stall(t *testing.T, blob []byte, n int) testupstream.Fault {
	done := make(chan struct{})
	t.Cleanup(func() { close(done) }) // before the upstream's own cleanup waits for this handler
	return func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) != "GET blob" {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(blob)))
		w.Write(blob[:n])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-done:
		}
		return true
	}
}

// startDownload GETs blob d through the daemon and returns the response
// once its first bytes arrived: the download is then in flight.
func startDownload(t *testing.T, s *signalled, up *testupstream.Upstream, d digest.Digest) (*http.Response, []byte) {
	t.Helper()
	resp, err := s.client(t).Get("https://" + up.Host + "/v2/r/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blob: %s", resp.Status)
	}
	first := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatalf("first bytes of the blob: %v", err)
	}
	return resp, first
}

// TestSIGTERMLetsDownloadFinish sends SIGTERM while a blob download that
// lasts longer than the old fixed 5s grace is in flight: regproxy stops
// accepting at once, the download completes within --shutdown-grace and
// is committed to the cache, and regproxy exits 0 with nothing in
// cache/tmp.
func TestSIGTERMLetsDownloadFinish(t *testing.T) {
	t.Parallel()
	up, d, blob := blobUpstream(t, 1<<20)
	up.SetFault(trickle(blob, 40, 175*time.Millisecond)) // about 7s
	s := startSignalled(t, t.TempDir(), "--registries", "registry.test", "--resolve", up.Resolve(),
		"--upstream-ca", up.CAFile, "--shutdown-grace", "30s")
	resp, first := startDownload(t, s, up, d)

	sent := s.signal(t, syscall.SIGTERM)
	s.waitShuttingDown(t)
	if !refused(s.addr, 2*time.Second) {
		t.Error("the proxy port still accepts connections after SIGTERM")
	}
	rest, err := io.ReadAll(resp.Body)
	if got := append(first, rest...); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("download after SIGTERM: %d of %d bytes, %v; want the whole blob", len(got), len(blob), err)
	}
	took := s.waitExit(t, sent, 30*time.Second)
	s.wantCleanExit(t)
	if took < 5*time.Second {
		t.Errorf("exited %v after SIGTERM, before the download could have finished", took)
	}
	if got := s.spool(t); len(got) != 0 {
		t.Errorf("cache/tmp after exit holds %q, want nothing", got)
	}
	if got := s.cached(t, d); !bytes.Equal(got, blob) {
		t.Errorf("cache holds %d bytes for the blob after exit, want the %d that were served", len(got), len(blob))
	}
}

// refused reports whether connections to addr are refused within limit.
func refused(addr string, limit time.Duration) bool {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
	}
	return false
}

// TestSIGTERMGraceCutsStalledDownload sends SIGTERM while a download whose
// upstream stalled is in flight, under a grace of 1s (from the
// environment): regproxy waits the grace, then cuts the response (the
// client sees a truncated body, not a complete one), cancels the fill,
// removes its spool file, and exits 0.
func TestSIGTERMGraceCutsStalledDownload(t *testing.T) {
	t.Parallel()
	up, d, blob := blobUpstream(t, 256<<10)
	up.SetFault(stall(t, blob, 64<<10))
	s := startSignalledEnv(t, t.TempDir(), []string{"REGPROXY_SHUTDOWN_GRACE=1s"},
		"--registries", "registry.test", "--resolve", up.Resolve(), "--upstream-ca", up.CAFile)
	resp, _ := startDownload(t, s, up, d)

	sent := s.signal(t, syscall.SIGTERM)
	took := s.waitExit(t, sent, 20*time.Second)
	s.wantCleanExit(t)
	if took < 900*time.Millisecond || took > 4*time.Second {
		t.Errorf("exited %v after SIGTERM, want after the 1s grace and within 4s", took)
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("the cut download ended without an error, as if complete")
	}
	if got := s.spool(t); len(got) != 0 {
		t.Errorf("cache/tmp after exit holds %q, want nothing", got)
	}
	if s.cached(t, d) != nil {
		t.Error("the cache holds the blob whose download was cut")
	}
	if !s.logged(0, func(e logEntry) bool { return e.Msg == "shutdown grace ended: cutting requests still in flight" }) {
		t.Error("no line saying the grace ended and requests were cut")
	}
	if !strings.Contains(s.log.String(), `"msg":"shutting down","cause":"terminated signal received","grace":"1s"`) {
		t.Error(`no "shutting down" line with the signal and the grace of 1s`)
	}
}

// TestBadShutdownGrace checks --shutdown-grace and REGPROXY_SHUTDOWN_GRACE
// as the other durations: a bad value is a usage error naming the flag.
// runCLI and t.Setenv forbid t.Parallel.
func TestBadShutdownGrace(t *testing.T) {
	for _, v := range []string{"0s", "-1s", "soon"} {
		t.Run(v, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, serveArgs(t, "--shutdown-grace", v)...)
			wantUsageError(t, "shutdown-grace", code, stdout, stderr)
		})
	}
	t.Run("REGPROXY_SHUTDOWN_GRACE", func(t *testing.T) {
		t.Setenv("REGPROXY_SHUTDOWN_GRACE", "soon")
		code, stdout, stderr := runCLI(t, serveArgs(t)...)
		wantUsageError(t, "shutdown-grace", code, stdout, stderr)
	})
}

// TestSIGTERMSilentConnect opens an intercepted CONNECT, reads the 200 and
// then says nothing, not even a TLS ClientHello: SIGTERM must not wait for
// that client (net/http's Shutdown waits five seconds for a connection
// that has sent nothing, if regproxy lets it count as one of its own).
func TestSIGTERMSilentConnect(t *testing.T) {
	t.Parallel()
	s := startSignalled(t, t.TempDir(), "--registries", "registry.test", "--shutdown-grace", "30s")
	conn, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(conn, "CONNECT registry.test:443 HTTP/1.1\r\nHost: registry.test:443\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v, %v; want 200", resp, err)
	}

	sent := s.signal(t, syscall.SIGTERM)
	if took := s.waitExit(t, sent, 20*time.Second); took > 2*time.Second {
		t.Errorf("exited %v after SIGTERM, want within 2s: the silent client held shutdown up", took)
	}
	s.wantCleanExit(t)
	if _, err := br.ReadByte(); err == nil {
		t.Error("the silent client's connection is still open after exit")
	}
}

// TestSecondSIGINTExitsAtOnce sends SIGINT twice while a stalled download
// would hold a 30s grace: the second signal kills regproxy at once, by the
// signal's default action.
func TestSecondSIGINTExitsAtOnce(t *testing.T) {
	t.Parallel()
	up, d, blob := blobUpstream(t, 256<<10)
	up.SetFault(stall(t, blob, 64<<10))
	s := startSignalled(t, t.TempDir(), "--registries", "registry.test", "--resolve", up.Resolve(),
		"--upstream-ca", up.CAFile, "--shutdown-grace", "30s")
	startDownload(t, s, up, d)

	s.signal(t, syscall.SIGINT)
	s.waitShuttingDown(t)
	time.Sleep(200 * time.Millisecond) // the first signal's shutdown is under way
	select {
	case <-s.exited:
		t.Fatalf("regproxy exited on the first SIGINT, with a download in flight: %v", s.err)
	default:
	}
	sent := s.signal(t, syscall.SIGINT)
	if took := s.waitExit(t, sent, 20*time.Second); took > 2*time.Second {
		t.Errorf("exited %v after the second SIGINT, want at once", took)
	}
	var ee *exec.ExitError
	if !errors.As(s.err, &ee) {
		t.Fatalf("exit after the second SIGINT: %v, want killed by SIGINT", s.err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Errorf("exit after the second SIGINT: %v, want killed by SIGINT", s.err)
	}
}

// TestSIGKILLMidFill kills regproxy with SIGKILL while a fill is writing
// its spool file: the partial blob stays in cache/tmp, never among the
// cached blobs, and the next start sweeps it and fetches the blob again.
func TestSIGKILLMidFill(t *testing.T) {
	t.Parallel()
	up, d, blob := blobUpstream(t, 256<<10)
	up.SetFault(stall(t, blob, 64<<10))
	dataDir := t.TempDir()
	args := []string{"--registries", "registry.test", "--resolve", up.Resolve(), "--upstream-ca", up.CAFile}
	s := startSignalled(t, dataDir, args...)
	startDownload(t, s, up, d)
	if len(s.spool(t)) == 0 {
		t.Fatal("no spool file in cache/tmp while the fill runs")
	}
	s.signal(t, syscall.SIGKILL)
	s.waitExit(t, time.Now(), 10*time.Second)
	if len(s.spool(t)) == 0 {
		t.Fatal("SIGKILL left cache/tmp empty; the test did not kill mid-fill")
	}
	if s.cached(t, d) != nil {
		t.Fatal("the cache holds the blob whose fill was killed")
	}

	up.SetFault(nil)
	again := startSignalled(t, dataDir, args...)
	if got := again.spool(t); len(got) != 0 {
		t.Errorf("cache/tmp after restart holds %q, want nothing", got)
	}
	resp, err := again.client(t).Get("https://" + up.Host + "/v2/r/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("blob after restart: %d bytes, %v; want the blob", len(got), err)
	}
	if n := up.Count("GET blob"); n != 2 {
		t.Errorf("upstream blob GETs: %d, want 2 (the killed fill and a fresh one)", n)
	}
	again.signal(t, syscall.SIGTERM)
	again.waitExit(t, time.Now(), 10*time.Second)
	again.wantCleanExit(t)
}
