package proxy_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rawIntercepted opens a CONNECT tunnel to the upstream's host through the
// proxy, completes TLS against the proxy's CA, and returns the connection
// for hand-written requests.
func rawIntercepted(t *testing.T, e *env) *tls.Conn {
	t.Helper()
	conn := rawProxy(t, e)
	io.WriteString(conn, "CONNECT "+e.up.Host+" HTTP/1.1\r\nHost: "+e.up.Host+"\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.caPEM)
	tc := tls.Client(conn, &tls.Config{RootCAs: pool, ServerName: "registry.test"})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS through the proxy: %v", err)
	}
	return tc
}

func rawProxy(t *testing.T, e *env) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", e.proxyURL.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { conn.Close() })
	return conn
}

// roundTrip writes raw request bytes and reads one response.
func roundTrip(t *testing.T, conn net.Conn, raw string) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the response to %q: %v", firstLine(raw), err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\r\n"); return l }

func TestBadRegistryRequestsAreRefused(t *testing.T) {
	t.Parallel()
	hex64 := strings.Repeat("ab", 32)
	cases := []struct {
		name, path string
		status     int
		code       string
	}{
		{"short digest", "/v2/r/blobs/sha256:abc", 400, "DIGEST_INVALID"},
		{"unknown algorithm", "/v2/r/blobs/md5:" + strings.Repeat("a", 32), 400, "DIGEST_INVALID"},
		{"sha512", "/v2/r/blobs/sha512:" + strings.Repeat("a", 128), 400, "DIGEST_INVALID"},
		{"uppercase hex", "/v2/r/blobs/sha256:" + strings.ToUpper(hex64), 400, "DIGEST_INVALID"},
		{"no algorithm", "/v2/r/blobs/" + hex64, 400, "DIGEST_INVALID"},
		{"uppercase name", "/v2/Team/app/blobs/sha256:" + hex64, 400, "NAME_INVALID"},
		{"name with port", "/v2/host:5000/app/blobs/sha256:" + hex64, 400, "NAME_INVALID"},
		{"dot segments", "/v2/r/../../../etc/blobs/sha256:" + hex64, 400, "UNSUPPORTED"},
		{"dot segment", "/v2/./r/manifests/latest", 400, "UNSUPPORTED"},
		{"escaped slash", "/v2/a%2Fb/blobs/sha256:" + hex64, 400, "UNSUPPORTED"},
		{"bad tag", "/v2/r/manifests/-bad", 400, "TAG_INVALID"},
		{"long tag", "/v2/r/manifests/" + strings.Repeat("t", 129), 400, "TAG_INVALID"},
		{"bad manifest digest", "/v2/r/manifests/sha256:zz", 400, "DIGEST_INVALID"},
		{"long name", "/v2/" + strings.Repeat("a/", 200) + "b/manifests/latest", 400, "NAME_INVALID"},
	}
	e := newEnv(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn := rawIntercepted(t, e)
			resp, body := roundTrip(t, conn, "GET "+tc.path+" HTTP/1.1\r\nHost: "+e.up.Host+"\r\n\r\n")
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d; want %d (body %s)", resp.StatusCode, tc.status, body)
			}
			var oci struct {
				Errors []struct{ Code, Message string }
			}
			if err := json.Unmarshal([]byte(body), &oci); err != nil || len(oci.Errors) != 1 || oci.Errors[0].Code != tc.code {
				t.Fatalf("body %s; want one OCI error with code %s", body, tc.code)
			}
		})
	}
	if n := e.up.Total(); n != 0 {
		t.Fatalf("%d bad requests reached upstream; want 0", n)
	}
	assertOnlyCacheDirs(t, e)
}

// assertOnlyCacheDirs checks that bad input created no file anywhere in
// the data dir beyond the CA and the cache's empty skeleton.
func assertOnlyCacheDirs(t *testing.T, e *env) {
	t.Helper()
	filepath.Walk(e.dataDir, func(path string, info os.FileInfo, err error) error {
		rel, _ := filepath.Rel(e.dataDir, path)
		if err == nil && !info.IsDir() && rel != filepath.Join("ca", "ca.crt") && rel != filepath.Join("ca", "ca.key") {
			t.Errorf("unexpected file %s", rel)
		}
		return nil
	})
}

func TestMalformedHTTPIsRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	huge := "X-Big: " + strings.Repeat("x", 100<<10) + "\r\n"
	cases := []struct {
		name   string
		conn   func(*testing.T, *env) net.Conn
		raw    string
		status int
	}{
		{"intercepted: garbage request line", func(t *testing.T, e *env) net.Conn { return rawIntercepted(t, e) }, "GARBAGE\r\n\r\n", 400},
		{"intercepted: oversized headers", func(t *testing.T, e *env) net.Conn { return rawIntercepted(t, e) }, "GET /v2/ HTTP/1.1\r\nHost: x\r\n" + huge + "\r\n", 431},
		{"proxy port: CONNECT without port", rawProxy, "CONNECT registry.test HTTP/1.1\r\nHost: registry.test\r\n\r\n", 400},
		{"proxy port: CONNECT to a bad host", rawProxy, "CONNECT bad_host!:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"proxy port: CONNECT to port 0", rawProxy, "CONNECT registry.test:0 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"proxy port: absolute-URI request", rawProxy, "GET http://" + e.up.Host + "/v2/ HTTP/1.1\r\nHost: " + e.up.Host + "\r\n\r\n", 403},
		{"proxy port: garbage request line", rawProxy, "GARBAGE\r\n\r\n", 400},
		{"proxy port: oversized headers", rawProxy, "GET / HTTP/1.1\r\nHost: x\r\n" + huge + "\r\n", 431},
		{"proxy port: unknown page", rawProxy, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, _ := roundTrip(t, tc.conn(t, e), tc.raw)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d; want %d", resp.StatusCode, tc.status)
			}
		})
	}
	if n := e.up.Total(); n != 0 {
		t.Fatalf("%d malformed requests reached upstream; want 0", n)
	}
}

func TestPlainPages(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	base := "http://" + e.proxyURL.Host
	cases := []struct{ path, want string }{
		{"/ca.crt", string(e.caPEM)},
		{"/healthz", "ok\n"},
	}
	for _, tc := range cases {
		resp, err := http.Get(base + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != tc.want {
			t.Fatalf("GET %s: %d %q; want 200 %q", tc.path, resp.StatusCode, body, tc.want)
		}
	}
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "curl -fsS http://"+e.proxyURL.Host+"/setup/docker | sh -s -- --ca-sha256 ") || !strings.Contains(string(body), "/ca.crt") {
		t.Fatalf("GET /: %q; want the node setup lines", body)
	}
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
}
