package proxy_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regproxy/regproxy/internal/testupstream"
	"github.com/regproxy/regproxy/proxy"
)

// The fast path (fastpath.go) serves manifest requests on intercepted
// connections before net/http sees them. These tests hold it to what
// net/http answers, and check the handoff to net/http, its limits and
// shutdown.

// fastEnv is an env whose image r:latest is pushed and pulled once, so
// that its tag and manifests are cached.
func fastEnv(t *testing.T, opts ...testupstream.Option) *env {
	t.Helper()
	e := newEnv(t, opts...)
	e.up.Push(t, "r", "latest", e.up.RandomImage(t, 1, 1000))
	e.pull("r", "latest")
	return e
}

// keepAlive is a hand-written client on one intercepted connection.
type keepAlive struct {
	t    *testing.T
	conn *tls.Conn
	br   *bufio.Reader
}

func openKeepAlive(t *testing.T, e *env) *keepAlive {
	t.Helper()
	c := rawIntercepted(t, e)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &keepAlive{t: t, conn: c, br: bufio.NewReader(c)}
}

// send writes raw as it is.
func (k *keepAlive) send(raw string) {
	k.t.Helper()
	if _, err := io.WriteString(k.conn, raw); err != nil {
		k.t.Fatalf("writing %q: %v", firstLine(raw), err)
	}
}

// read reads one response to a request with method, and its body.
func (k *keepAlive) read(method string) (*http.Response, string) {
	k.t.Helper()
	resp, err := http.ReadResponse(k.br, &http.Request{Method: method})
	if err != nil {
		k.t.Fatalf("reading a response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		k.t.Fatalf("reading a body: %v", err)
	}
	return resp, string(body)
}

// do sends raw and reads its response.
func (k *keepAlive) do(raw string) (*http.Response, string) {
	k.t.Helper()
	k.send(raw)
	return k.read(strings.Fields(raw)[0])
}

// manifestGet is a containerd-like GET of path on host.
func manifestGet(method, host, path string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: containerd/2.0\r\n", method, path, host)
	b.WriteString("Accept: application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json\r\n")
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// answer is what a client sees of a response: all but Date, which differs
// by the second.
func answer(resp *http.Response, body string) string {
	h := resp.Header.Clone()
	if h.Get("Date") == "" {
		return "no Date header"
	}
	h.Del("Date")
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%s close=%v length=%d te=%v\n", resp.Status, resp.Close, resp.ContentLength, resp.TransferEncoding)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %q\n", k, h[k])
	}
	b.WriteString(body)
	return b.String()
}

// TestFastPathAnswersAsNetHTTP sends the same requests on one connection
// to the proxy with its fast path and without it, and compares every
// response but its Date: hits, HEADs, conditional and range requests,
// digests, misses upstream, bad names, a foreign Host, a blob in between
// (which hands the connection to net/http), and a last request asking to
// close.
func TestFastPathAnswersAsNetHTTP(t *testing.T) {
	t.Parallel()
	e := fastEnv(t)
	digest := e.pull("r", "latest").String()
	blob := firstLayer(t, e, "r", "latest")
	h := e.up.Host
	requests := []string{
		manifestGet("GET", h, "/v2/r/manifests/latest"),
		manifestGet("HEAD", h, "/v2/r/manifests/latest"),
		manifestGet("GET", h, "/v2/r/manifests/latest", `If-None-Match: "`+digest+`"`),
		manifestGet("GET", h, "/v2/r/manifests/latest", "Range: bytes=0-9"),
		manifestGet("GET", h, "/v2/r/manifests/"+digest),
		manifestGet("HEAD", h, "/v2/r/manifests/"+digest),
		manifestGet("GET", h, "/v2/r/manifests/nosuchtag"),
		manifestGet("GET", h, "/v2/UPPER/manifests/latest"),
		manifestGet("GET", "other.test", "/v2/r/manifests/latest"),
		manifestGet("GET", h, "/v2/r/blobs/"+blob),
		manifestGet("GET", h, "/v2/r/manifests/latest"),
		manifestGet("GET", h, "/v2/r/manifests/latest", "Connection: close"),
	}
	run := func() []string {
		k := openKeepAlive(t, e)
		var got []string
		for _, raw := range requests {
			got = append(got, answer(k.do(raw)))
		}
		return got
	}
	run() // caches the tag as these requests accept it
	fast := run()
	if n := proxy.FastServed(e.proxy); n < 2*9 {
		t.Fatalf("the fast path took %d requests; want at least the 9 before the blob, twice", n)
	}
	e.stop()
	e.adjust = proxy.DisableFastPath
	e.start()
	e.pull("r", "latest") // access learnt again
	slow := run()
	if n := proxy.FastServed(e.proxy); n != 0 {
		t.Fatalf("the fast path took %d requests with it off", n)
	}
	for i := range requests {
		if fast[i] != slow[i] {
			t.Errorf("%q:\nfast path:\n%s\nnet/http:\n%s", firstLine(requests[i]), fast[i], slow[i])
		}
	}
}

// firstLayer returns the digest of the first layer of repo:tag.
func firstLayer(t *testing.T, e *env, repo, tag string) string {
	t.Helper()
	c := e.client()
	resp, body := e.get(c, http.MethodGet, "/v2/"+repo+"/manifests/"+tag,
		"Accept", "application/vnd.docker.distribution.manifest.v2+json")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest: %s", resp.Status)
	}
	i := strings.Index(string(body), `"layers"`)
	j := strings.Index(string(body[i:]), `"digest":"`)
	if i < 0 || j < 0 {
		t.Fatalf("no layer in %s", body)
	}
	rest := string(body[i+j+len(`"digest":"`):])
	return rest[:strings.IndexByte(rest, '"')]
}

// TestFastPathPipelined writes manifest requests and a blob request in one
// write, then another manifest request: every response comes back whole
// and in order, the blob's from net/http after the handoff.
func TestFastPathPipelined(t *testing.T) {
	t.Parallel()
	e := fastEnv(t)
	blob := firstLayer(t, e, "r", "latest")
	h := e.up.Host
	k := openKeepAlive(t, e)
	k.send(manifestGet("GET", h, "/v2/r/manifests/latest") + manifestGet("HEAD", h, "/v2/r/manifests/latest") +
		manifestGet("GET", h, "/v2/r/blobs/"+blob))
	get, body := k.read("GET")
	head, _ := k.read("HEAD")
	b, blobBody := k.read("GET")
	if get.StatusCode != 200 || head.StatusCode != 200 || b.StatusCode != 200 {
		t.Fatalf("statuses %d %d %d; want 200s", get.StatusCode, head.StatusCode, b.StatusCode)
	}
	if head.ContentLength != int64(len(body)) || head.Header.Get("Docker-Content-Digest") != get.Header.Get("Docker-Content-Digest") {
		t.Fatalf("HEAD says %d bytes, %s; GET sent %d, %s", head.ContentLength, head.Header.Get("Docker-Content-Digest"),
			len(body), get.Header.Get("Docker-Content-Digest"))
	}
	if int64(len(blobBody)) != b.ContentLength || len(blobBody) == 0 {
		t.Fatalf("blob body %d bytes; Content-Length %d", len(blobBody), b.ContentLength)
	}
	if again, _ := k.do(manifestGet("GET", h, "/v2/r/manifests/latest")); again.StatusCode != 200 {
		t.Fatalf("after the handoff: %s", again.Status)
	}
	if n := proxy.FastServed(e.proxy); n < 2 {
		t.Fatalf("the fast path took %d requests; want the 2 before the blob", n)
	}
}

// TestFastPathLeavesOddRequestsToNetHTTP sends requests the fast path
// must not read itself: each still gets net/http's answer, and a request
// body is never taken for a request (no request is smuggled past the
// proxy's parser).
func TestFastPathLeavesOddRequestsToNetHTTP(t *testing.T) {
	t.Parallel()
	e := fastEnv(t)
	h := e.up.Host
	pad := "X-Pad: " + strings.Repeat("p", 5000) // a header block beyond the fast path's buffer
	huge := "X-Huge: " + strings.Repeat("h", 70<<10)
	smuggled := manifestGet("GET", h, "/v2/r/manifests/nosuchtag")
	cases := []struct {
		name   string
		raw    string
		status int
	}{
		{"header block over 4 KiB", manifestGet("GET", h, "/v2/r/manifests/latest", pad), 200},
		{"header block over net/http's limit", manifestGet("GET", h, "/v2/r/manifests/latest", huge), 431},
		{"HTTP/1.0", strings.Replace(manifestGet("GET", h, "/v2/r/manifests/latest"), "HTTP/1.1", "HTTP/1.0", 1), 200},
		{"bare LF line ends", strings.ReplaceAll(manifestGet("GET", h, "/v2/r/manifests/latest"), "\r\n", "\n"), 200},
		{"two Host headers", manifestGet("GET", h, "/v2/r/manifests/latest", "Host: "+h), 400},
		{"no Host", strings.Replace(manifestGet("GET", h, "/v2/r/manifests/latest"), "Host: "+h+"\r\n", "", 1), 400},
		{"folded header (net/http unfolds it)", manifestGet("GET", h, "/v2/r/manifests/latest", "X-A: 1", " folded"), 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := openKeepAlive(t, e)
			if resp, _ := k.do(tc.raw); resp.StatusCode != tc.status {
				t.Fatalf("status %d; want %d", resp.StatusCode, tc.status)
			}
		})
	}
	t.Run("GET with a body that looks like a request", func(t *testing.T) {
		before := e.up.Count("manifest")
		k := openKeepAlive(t, e)
		raw := manifestGet("GET", h, "/v2/r/manifests/latest", fmt.Sprintf("Content-Length: %d", len(smuggled))) + smuggled
		if resp, _ := k.do(raw); resp.StatusCode != 200 {
			t.Fatalf("status %d; want 200", resp.StatusCode)
		}
		if resp, _ := k.do(manifestGet("GET", h, "/v2/r/manifests/latest")); resp.StatusCode != 200 {
			t.Fatalf("next request: status %d; want 200 (the body was read as a request)", resp.StatusCode)
		}
		if n := e.up.Count("manifest") - before; n != 0 {
			t.Fatalf("%d manifest requests upstream: the body was served as a request", n)
		}
	})
}

// TestFastPathSlowHeader sends a request's header in two writes 100 ms
// apart: the fast path waits for the rest of it.
func TestFastPathSlowHeader(t *testing.T) {
	t.Parallel()
	e := fastEnv(t)
	k := openKeepAlive(t, e)
	raw := manifestGet("GET", e.up.Host, "/v2/r/manifests/latest")
	k.send(raw[:20])
	time.Sleep(100 * time.Millisecond)
	k.send(raw[20:])
	if resp, _ := k.read("GET"); resp.StatusCode != 200 {
		t.Fatalf("status %d; want 200", resp.StatusCode)
	}
	if n := proxy.FastServed(e.proxy); n != 1 {
		t.Fatalf("the fast path took %d requests; want 1", n)
	}
}

// TestFastPathShutdown checks Shutdown with connections on the fast path:
// an idle one is closed at once, and a request in flight (a manifest
// upstream holds for 300 ms) is answered whole before its connection
// closes.
func TestFastPathShutdown(t *testing.T) {
	t.Parallel()
	e := fastEnv(t)
	h := e.up.Host
	idle := openKeepAlive(t, e)
	if resp, _ := idle.do(manifestGet("GET", h, "/v2/r/manifests/latest")); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	busy := openKeepAlive(t, e)
	e.up.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if testupstream.Kind(r) == "manifest" {
			time.Sleep(300 * time.Millisecond)
		}
		return false
	})
	e.up.Push(t, "r", "slow", e.up.RandomImage(t, 1, 10))
	busy.send(manifestGet("GET", h, "/v2/r/manifests/slow"))
	time.Sleep(100 * time.Millisecond) // the request is upstream now
	stopped := make(chan struct{})
	go func() { e.stop(); close(stopped) }()
	if resp, body := busy.read("GET"); resp.StatusCode != 200 || int64(len(body)) != resp.ContentLength {
		t.Fatalf("in-flight request: %s, %d of %d bytes", resp.Status, len(body), resp.ContentLength)
	}
	for _, k := range []*keepAlive{idle, busy} {
		if _, err := k.br.ReadByte(); err == nil {
			t.Fatal("a connection stayed open after Shutdown")
		}
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}
