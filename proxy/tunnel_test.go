package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regproxy/regproxy/ca"
	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/internal/testupstream"
	"github.com/regproxy/regproxy/proxy"
)

// These tests reproduce attacks on the proxy host through CONNECT tunnels
// and upstream redirects: each one fails without the check it names. They
// dial nothing but loopback and the host's own addresses; 169.254.169.254
// is refused before any packet leaves.

// ioTimeout bounds every read and write of these tests, so that none can
// hang when a check is missing.
const ioTimeout = 5 * time.Second

// tunnelProxy is a regproxy started for a tunnel test.
type tunnelProxy struct {
	addr string        // host:port it listens on
	log  *syncBuffer   // its log
	stop func()        // stops it; also run at cleanup
	done chan struct{} // closed when Serve has returned
}

// startTunnelProxy serves a proxy with cfg (CA, Store and Logger filled in)
// on listen until the test ends.
func startTunnelProxy(t *testing.T, cfg proxy.Config, listen string) *tunnelProxy {
	t.Helper()
	authority, err := ca.LoadOrCreate(filepath.Join(t.TempDir(), "ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tp := &tunnelProxy{log: &syncBuffer{}, done: make(chan struct{})}
	cfg.CA, cfg.Store = authority, cachestore.NewMemory()
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, tp.log), nil))
	if cfg.Registries == nil {
		cfg.Registries = []string{"registry.test"}
	}
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	tp.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { defer close(tp.done); p.Serve(ctx, ln) }()
	tp.stop = func() { cancel(); <-tp.done }
	t.Cleanup(tp.stop)
	return tp
}

// syncBuffer is a log sink that tests read while the proxy writes.
type syncBuffer struct {
	mu  sync.Mutex // protects buf
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// target is a TCP server a tunnel may reach. It counts connections and runs
// serve on each; the test's end cuts them all.
type target struct {
	ln       net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex // protects conns
	conns    []net.Conn
}

// echo returns what it reads until EOF, then closes.
func echo(c net.Conn) { io.Copy(c, c) }

func startTarget(t *testing.T, listen string, serve func(net.Conn)) *target {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{ln: ln}
	tg.wg.Add(1)
	go tg.accept(serve)
	t.Cleanup(tg.close)
	return tg
}

func (tg *target) accept(serve func(net.Conn)) {
	defer tg.wg.Done()
	for {
		c, err := tg.ln.Accept()
		if err != nil {
			return
		}
		tg.accepted.Add(1)
		tg.mu.Lock()
		tg.conns = append(tg.conns, c)
		tg.mu.Unlock()
		tg.wg.Add(1)
		go func() { defer tg.wg.Done(); defer c.Close(); serve(c) }()
	}
}

func (tg *target) close() {
	tg.ln.Close()
	tg.mu.Lock()
	for _, c := range tg.conns {
		c.Close()
	}
	tg.mu.Unlock()
	tg.wg.Wait()
}

func (tg *target) port() string {
	_, port, _ := net.SplitHostPort(tg.ln.Addr().String())
	return port
}

// tunnelConn is the client end of a tunnel; it reads first what the
// response parser buffered.
type tunnelConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *tunnelConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// connect sends CONNECT dst to the proxy by hand (Go clients bypass proxies
// for loopback targets) and returns the status and, on 200, the tunnel.
func connect(t *testing.T, proxyAddr, dst string) (int, *tunnelConn) {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	io.WriteString(c, "CONNECT "+dst+" HTTP/1.1\r\nHost: "+dst+"\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		t.Fatalf("CONNECT %s: %v", dst, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		c.Close()
		return resp.StatusCode, nil
	}
	c.SetDeadline(time.Time{})
	t.Cleanup(func() { c.Close() })
	return resp.StatusCode, &tunnelConn{Conn: c, r: br}
}

// echoThrough sends msg through the tunnel to an echo target and checks that
// it comes back.
func echoThrough(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(ioTimeout))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write through the tunnel: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo through the tunnel: %q, %v; want %q", got, err, msg)
	}
}

// wantDenied checks the log for the DENIED line of dst, and for why.
func wantDenied(t *testing.T, log *syncBuffer, dst, why string) {
	t.Helper()
	logged := log.String()
	if !strings.Contains(logged, "host="+dst+" ") || !strings.Contains(logged, "outcome=DENIED") || !strings.Contains(logged, why) {
		t.Errorf("log lacks a DENIED line for %s with %q:\n%s", dst, why, logged)
	}
}

// waitLogLine waits until a line of log matches re, and returns it.
// Tunnels are logged when they end, a little after the client's side
// closed.
func waitLogLine(t *testing.T, log *syncBuffer, re *regexp.Regexp) string {
	t.Helper()
	for deadline := time.Now().Add(ioTimeout); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for line := range strings.Lines(log.String()) {
			if re.MatchString(line) {
				return line
			}
		}
	}
	t.Fatalf("no log line matches %s:\n%s", re, log)
	return ""
}

// TestTunnelLoggedWhenItEnds: a tunnel's line is written when the tunnel
// ends, with the bytes it relayed each way (bytes to the client, bytes_in
// from it) and how long it lasted; a tunnel whose dial failed is logged
// 502 with the cause, on the same line.
func TestTunnelLoggedWhenItEnds(t *testing.T) {
	t.Parallel()
	// The target reads a 5-byte question and answers 11 bytes.
	tg := startTarget(t, "127.0.0.1:0", func(c net.Conn) {
		if _, err := io.ReadFull(c, make([]byte, 5)); err == nil {
			io.WriteString(c, "hello world")
		}
		io.Copy(io.Discard, c)
	})
	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downAddr := down.Addr().String()
	down.Close() // nothing listens there now
	tp := startTunnelProxy(t, proxy.Config{Resolve: map[string]string{
		"talk.test:443": tg.ln.Addr().String(), "down.test:443": downAddr}}, "127.0.0.1:0")

	t.Run("relayed", func(t *testing.T) {
		code, c := connect(t, tp.addr, "talk.test:443")
		if code != http.StatusOK {
			t.Fatalf("CONNECT talk.test:443: %d; want 200", code)
		}
		c.SetDeadline(time.Now().Add(ioTimeout))
		io.WriteString(c, "hello")
		if _, err := io.ReadFull(c, make([]byte, 11)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // a tunnel that lasts
		if strings.Contains(tp.log.String(), "host=talk.test:443") {
			t.Fatalf("tunnel logged while it is open:\n%s", tp.log)
		}
		c.Close()
		line := waitLogLine(t, tp.log, regexp.MustCompile(`method=CONNECT host=talk\.test:443 .*outcome=TUNNEL status=200 bytes=11 bytes_in=5 duration=`))
		d, err := time.ParseDuration(regexp.MustCompile(`duration=(\S+)`).FindStringSubmatch(line)[1])
		if err != nil || d < 20*time.Millisecond {
			t.Errorf("tunnel duration %v (%v); want at least the 20ms it was open, in:\n%s", d, err, line)
		}
	})
	t.Run("dial failed", func(t *testing.T) {
		if code, _ := connect(t, tp.addr, "down.test:443"); code != http.StatusBadGateway {
			t.Fatalf("CONNECT down.test:443: %d; want 502", code)
		}
		waitLogLine(t, tp.log, regexp.MustCompile(`level=WARN msg=request method=CONNECT host=down\.test:443 .*outcome=ERROR status=502 bytes=0 bytes_in=0 duration=\S+ error=".*connection refused"`))
	})
}

// hostIPv4 returns an IPv4 address of the host that is not loopback, or
// fails the test.
func hostIPv4(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatalf("interface addresses: %v", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Fatal("the host has no IPv4 address but loopback: this test needs one")
	return ""
}

// TestTunnelGuardRefusesHostAddresses: a CONNECT must not reach the proxy
// host's own services, its metadata endpoint or the proxy itself, however
// the address is spelt. Each is answered 403 and logged DENIED with the
// reason, and no connection reaches the target.
func TestTunnelGuardRefusesHostAddresses(t *testing.T) {
	t.Parallel()
	v4 := startTarget(t, "127.0.0.1:0", echo)
	v6, v6port := v4, "0" // replaced where the host has IPv6 loopback
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close()
		v6 = startTarget(t, "[::1]:0", echo)
		v6port = v6.port()
	}
	for _, tc := range []struct {
		name   string
		listen string // where the proxy listens: "" loopback, "host" a host address, "any" the wildcard
		dst    string // "" means the proxy's own address (with "any", its port on a host address)
		why    string
	}{
		{"loopback", "", "127.0.0.1:" + v4.port(), "loopback"},
		{"IPv4-mapped loopback", "", "[::ffff:127.0.0.1]:" + v4.port(), "loopback"},
		{"IPv6 loopback", "", "[::1]:" + v6port, "loopback"},
		{"unspecified", "", "0.0.0.0:" + v4.port(), "unspecified"},
		{"IPv6 unspecified", "", "[::]:" + v6port, "unspecified"},
		{"name resolving to loopback", "", "localhost:" + v4.port(), "loopback"},
		{"cloud metadata", "", "169.254.169.254:80", "link-local"},
		{"IPv4-mapped cloud metadata", "", "[::ffff:169.254.169.254]:80", "link-local"},
		{"the proxy itself", "", "", "loopback"},
		{"the proxy on a host address", "host", "", "own listen address"},
		{"the proxy's port on a host address, listening on all", "any", "", "own listen address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if strings.HasSuffix(tc.dst, "]:0") {
				t.Fatal("the host has no IPv6 loopback: this test needs one")
			}
			tp := startTunnelProxy(t, proxy.Config{}, listenAddr(t, tc.listen))
			proxyAddr, dst := tp.addr, tc.dst
			if dst == "" {
				dst = tp.addr
			}
			if tc.listen == "any" { // reach it on loopback, name it by a host address
				_, port, _ := net.SplitHostPort(tp.addr)
				proxyAddr, dst = "127.0.0.1:"+port, net.JoinHostPort(hostIPv4(t), port)
			}
			if code, _ := connect(t, proxyAddr, dst); code != http.StatusForbidden {
				t.Errorf("CONNECT %s: %d; want 403", dst, code)
			}
			wantDenied(t, tp.log, dst, tc.why)
		})
	}
	t.Cleanup(func() {
		if n := v4.accepted.Load() + v6.accepted.Load(); n != 0 { // v6 is v4 without IPv6 loopback
			t.Errorf("%d connections reached loopback through the proxy; want 0", n)
		}
	})
}

// listenAddr is where a guard case's proxy listens: on loopback, on a
// host address ("host") or on all addresses ("any").
func listenAddr(t *testing.T, kind string) string {
	switch kind {
	case "host":
		return hostIPv4(t) + ":0"
	case "any":
		hostIPv4(t) // skip on a host with loopback alone
		return "0.0.0.0:0"
	}
	return "127.0.0.1:0"
}

// TestTunnelByResolveIsExempt: an address the operator gave with --resolve
// is dialled even on loopback; that is how a registry on the proxy host is
// reached.
func TestTunnelByResolveIsExempt(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, "127.0.0.1:0", echo)
	tp := startTunnelProxy(t, proxy.Config{Resolve: map[string]string{"tunnelled.test:443": tg.ln.Addr().String()}}, "127.0.0.1:0")
	code, c := connect(t, tp.addr, "tunnelled.test:443")
	if code != http.StatusOK {
		t.Fatalf("CONNECT tunnelled.test:443 (--resolve to loopback): %d; want 200", code)
	}
	echoThrough(t, c, "ping")
}

// TestTunnelDenyPolicy: under --tunnel deny only --tunnel-allow entries are
// tunnelled; a host entry matches every port, a host:port entry one port.
func TestTunnelDenyPolicy(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, "127.0.0.1:0", echo)
	resolve := map[string]string{}
	for _, dst := range []string{"allowed.test:443", "allowed.test:8443", "ported.test:8443", "ported.test:443", "other.test:443"} {
		resolve[dst] = tg.ln.Addr().String()
	}
	tp := startTunnelProxy(t, proxy.Config{TunnelDeny: true, TunnelAllow: []string{"allowed.test", "ported.test:8443"}, Resolve: resolve}, "127.0.0.1:0")
	for _, tc := range []struct {
		dst  string
		want int
	}{
		{"allowed.test:443", http.StatusOK},
		{"allowed.test:8443", http.StatusOK},
		{"ported.test:8443", http.StatusOK},
		{"ported.test:443", http.StatusForbidden},
		{"other.test:443", http.StatusForbidden},
	} {
		t.Run(tc.dst, func(t *testing.T) {
			before := tg.accepted.Load()
			code, c := connect(t, tp.addr, tc.dst)
			if code != tc.want {
				t.Fatalf("CONNECT %s: %d; want %d", tc.dst, code, tc.want)
			}
			if c != nil {
				echoThrough(t, c, "ping")
				return
			}
			wantDenied(t, tp.log, tc.dst, "outcome=DENIED")
			if n := tg.accepted.Load() - before; n != 0 {
				t.Errorf("refused CONNECT %s still dialled the target %d times", tc.dst, n)
			}
		})
	}
}

// drip writes a byte every 50ms, twelve times, then waits for the tunnel to
// close: one-way traffic for longer than the idle timeout of the test.
func drip(c net.Conn) {
	for range 12 {
		time.Sleep(50 * time.Millisecond)
		if _, err := c.Write([]byte{'.'}); err != nil {
			return
		}
	}
	io.Copy(io.Discard, c)
}

// TestTunnelIdleTimeout: a tunnel that moves no byte either way for the
// idle timeout is closed; traffic in either direction keeps it open.
func TestTunnelIdleTimeout(t *testing.T) {
	t.Parallel()
	const idle = 300 * time.Millisecond
	both := startTarget(t, "127.0.0.1:0", echo)
	oneWay := startTarget(t, "127.0.0.1:0", drip)
	tp := startTunnelProxy(t, proxy.Config{TunnelIdleTimeout: idle, Resolve: map[string]string{
		"echo.test:443": both.ln.Addr().String(), "drip.test:443": oneWay.ln.Addr().String()}}, "127.0.0.1:0")

	t.Run("traffic both ways, then silence", func(t *testing.T) {
		t.Parallel()
		_, c := connect(t, tp.addr, "echo.test:443")
		for range 6 { // 600ms in all, twice the idle timeout
			time.Sleep(idle / 3)
			echoThrough(t, c, "x")
		}
		wantClosedWithin(t, c, ioTimeout)
	})
	t.Run("traffic one way, then silence", func(t *testing.T) {
		t.Parallel()
		_, c := connect(t, tp.addr, "drip.test:443")
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		if _, err := io.ReadFull(c, make([]byte, 12)); err != nil {
			t.Fatalf("one-way traffic for 600ms was cut: %v", err)
		}
		wantClosedWithin(t, c, ioTimeout)
	})
}

// wantClosedWithin reads from c until the proxy closes it, which must
// happen before d has passed.
func wantClosedWithin(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("idle tunnel still open after %v", d)
	}
}

// TestTunnelPerClientCap: one client IP holds at most TunnelMaxPerClient
// tunnels at once; one more is refused with 429 and logged DENIED, and a
// closed tunnel frees its place.
func TestTunnelPerClientCap(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, "127.0.0.1:0", echo)
	tp := startTunnelProxy(t, proxy.Config{TunnelMaxPerClient: 2,
		Resolve: map[string]string{"echo.test:443": tg.ln.Addr().String()}}, "127.0.0.1:0")
	var open []net.Conn
	for i := range 2 {
		code, c := connect(t, tp.addr, "echo.test:443")
		if code != http.StatusOK {
			t.Fatalf("tunnel %d of 2: %d; want 200", i+1, code)
		}
		echoThrough(t, c, "ping") // the tunnel is up, and counted
		open = append(open, c)
	}
	if code, _ := connect(t, tp.addr, "echo.test:443"); code != http.StatusTooManyRequests {
		t.Fatalf("third tunnel: %d; want 429", code)
	}
	wantDenied(t, tp.log, "echo.test:443", "too many tunnels")

	open[0].Close()
	for deadline := time.Now().Add(ioTimeout); ; time.Sleep(20 * time.Millisecond) {
		code, _ := connect(t, tp.addr, "echo.test:443")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after one tunnel closed: %d; want 200 within %v", code, ioTimeout)
		}
	}
}

// TestTunnelsEndWithTheProxy: stopping the proxy cuts its tunnels, so that
// none outlives it.
func TestTunnelsEndWithTheProxy(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, "127.0.0.1:0", echo)
	tp := startTunnelProxy(t, proxy.Config{Resolve: map[string]string{"echo.test:443": tg.ln.Addr().String()}}, "127.0.0.1:0")
	_, c := connect(t, tp.addr, "echo.test:443")
	echoThrough(t, c, "ping")
	tp.stop()
	wantClosedWithin(t, c, ioTimeout)
}

// TestRedirectToHostAddressIsNotFollowed: a registry may redirect a blob
// to any URL; regproxy follows redirects itself, so a redirect to the
// proxy host's loopback must be refused, not fetched.
func TestRedirectToHostAddressIsNotFollowed(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	local := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, "secret")
	}))
	defer local.Close()
	_, port, _ := net.SplitHostPort(local.Listener.Addr().String())
	for _, loc := range []string{local.URL + "/latest/meta-data/", "http://localhost:" + port + "/", "http://[::ffff:127.0.0.1]:" + port + "/"} {
		t.Run(loc, func(t *testing.T) {
			e := newEnv(t)
			e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
				if testupstream.Kind(r) != "GET blob" {
					return false
				}
				http.Redirect(w, r, loc, http.StatusTemporaryRedirect)
				return true
			})
			resp, _ := e.get(e.client(), "GET", "/v2/r/blobs/sha256:"+strings.Repeat("ab", 32))
			if resp.StatusCode == http.StatusOK {
				t.Errorf("blob redirected to %s: 200; want an error", loc)
			}
		})
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the loopback server behind the redirects got %d requests; want 0", n)
	}
}
