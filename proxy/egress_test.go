package proxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// connectProxy is a minimal corporate egress proxy: it accepts CONNECT,
// maps fake host names to loopback addresses, and counts tunnels.
type connectProxy struct {
	ln      net.Listener
	resolve map[string]string
	tunnels atomic.Int64
	wg      sync.WaitGroup

	mu    sync.Mutex // protects conns
	conns map[net.Conn]bool
}

// track remembers c so that close can cut it; false once closed.
func (cp *connectProxy) track(c net.Conn) bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.conns == nil {
		return false
	}
	cp.conns[c] = true
	return true
}

// close stops accepting and cuts every tunnel still open.
func (cp *connectProxy) close() {
	cp.ln.Close()
	cp.mu.Lock()
	for c := range cp.conns {
		c.Close()
	}
	cp.conns = nil
	cp.mu.Unlock()
	cp.wg.Wait()
}

func startConnectProxy(t *testing.T, resolve map[string]string) *connectProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp := &connectProxy{ln: ln, resolve: resolve, conns: map[net.Conn]bool{}}
	cp.wg.Add(1)
	go cp.serve()
	t.Cleanup(cp.close)
	return cp
}

func (cp *connectProxy) URL() *url.URL { return &url.URL{Scheme: "http", Host: cp.ln.Addr().String()} }

func (cp *connectProxy) serve() {
	defer cp.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := cp.ln.Accept()
		if err != nil {
			return
		}
		if !cp.track(c) {
			c.Close()
			return
		}
		conns.Add(1)
		go func() { defer conns.Done(); cp.tunnel(c) }()
	}
}

func (cp *connectProxy) tunnel(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil || req.Method != http.MethodConnect {
		return
	}
	addr, ok := cp.resolve[req.Host]
	if !ok {
		io.WriteString(c, "HTTP/1.1 403 Forbidden\r\n\r\n")
		return
	}
	up, err := net.Dial("tcp", addr)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	defer up.Close()
	if !cp.track(up) {
		return
	}
	cp.tunnels.Add(1)
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	done := make(chan struct{})
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); close(done) }()
	io.Copy(c, up)
	c.(*net.TCPConn).CloseWrite()
	<-done
}

func TestUpstreamProxyCarriesInterceptionsAndTunnels(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	other := testupstream.Start(t, testupstream.WithHostName("registry2.test"))
	// regproxy applies --resolve before it asks the egress proxy, so the
	// intercepted registry arrives as an address; registry2.test, with no
	// --resolve entry, arrives by name.
	egress := startConnectProxy(t, map[string]string{e.up.Addr: e.up.Addr, other.Host: other.Addr})
	e.stop()
	e.upstreamProxy = egress.URL()
	e.start() // no --resolve for registry2.test: the egress proxy resolves it
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "r", "t", img)
	e.pull("r", "t")
	intercepted := egress.tunnels.Load()
	if intercepted == 0 || e.up.Count("GET blob") != 2 {
		t.Fatalf("pull through regproxy: egress tunnels %d, upstream blob GETs %d; want >0 and 2", intercepted, e.up.Count("GET blob"))
	}

	tr := &http.Transport{Proxy: http.ProxyURL(e.proxyURL), TLSClientConfig: tlsConfig(other.CertPool())}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://" + other.Host + "/v2/")
	if err != nil {
		t.Fatalf("tunnel through the egress proxy: %v", err)
	}
	resp.Body.Close()
	if egress.tunnels.Load() != intercepted+1 || other.Count("GET ping") != 1 {
		t.Fatalf("tunnel: egress tunnels %d (was %d), upstream pings %d", egress.tunnels.Load(), intercepted, other.Count("GET ping"))
	}
}

// retryAfter answers the given kinds with 429 and Retry-After.
func retryAfter(seconds string, kinds ...string) testupstream.Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		for _, k := range kinds {
			if testupstream.Kind(r) == k {
				w.Header().Set("Retry-After", seconds)
				http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`, http.StatusTooManyRequests)
				return true
			}
		}
		return false
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.stop()
	e.ttl = time.Minute // shorter than the Retry-After below
	e.start()
	c := e.client()
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "r", "cached", img)
	e.up.Push(t, "r", "uncached", img)
	_, want := e.get(c, "GET", "/v2/r/manifests/cached")

	e.up.SetFault(retryAfter("120", "GET manifest", "HEAD manifest"))
	resp, _ := e.get(c, "GET", "/v2/r/manifests/uncached")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "120" {
		t.Fatalf("uncached tag under a rate limit: %d Retry-After %q; want upstream's 429", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	e.up.ResetCounts()
	e.clock.Advance(e.ttl + time.Second) // "cached" is now stale, but the back-off holds
	resp, got := e.get(c, "GET", "/v2/r/manifests/cached")
	if resp.StatusCode != 200 || string(got) != string(want) {
		t.Fatalf("stale tag during back-off: %d; want 200 with the stale copy", resp.StatusCode)
	}
	resp, _ = e.get(c, "GET", "/v2/r/manifests/uncached")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("uncached tag during back-off: %d; want 429 with Retry-After", resp.StatusCode)
	}
	if n := e.up.Total(); n != 0 {
		t.Fatalf("%d upstream requests during the Retry-After window; want 0", n)
	}
	e.up.SetFault(nil)
	e.clock.Advance(2 * time.Minute)
	if resp, _ := e.get(c, "GET", "/v2/r/manifests/uncached"); resp.StatusCode != 200 {
		t.Fatalf("after the back-off: %d; want 200", resp.StatusCode)
	}
}
