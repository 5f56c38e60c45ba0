package proxy_test

import (
	"bufio"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/bcrypt"

	"github.com/regproxy/regproxy/proxy"
)

// These tests check client authentication on the proxy port (--htpasswd):
// every CONNECT and proxy request needs Proxy-Authorization, the plain
// pages do not, and a refused CONNECT reaches neither a tunnel nor the
// registry server.

const (
	alicePassword = "alice-s3cret"
	// bobPassword is bob's, but bob's entry is MD5, which is not used.
	bobPassword = "bob-s3cret"
	// bobMD5 is `openssl passwd -apr1 -salt 0hOTwS2J bob-s3cret`.
	bobMD5 = "$apr1$0hOTwS2J$2eu2QHXSRHE0R9WFh/tA0."
)

// htpasswdLine is an htpasswd entry for user, as `htpasswd -B` writes it
// ($2y$), at bcrypt's lowest cost to keep tests fast.
func htpasswdLine(t testing.TB, user, password string) string {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return user + ":$2y$" + strings.TrimPrefix(string(hash), "$2a$")
}

// testUsers loads an htpasswd file with alice (bcrypt), a comment, a blank
// line and bob (MD5, skipped).
func testUsers(t testing.TB) *proxy.Htpasswd {
	t.Helper()
	file := filepath.Join(t.TempDir(), "htpasswd")
	content := "# proxy users\n\n" + htpasswdLine(t, "alice", alicePassword) + "\n" +
		"bob:" + bobMD5 + "\n"
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := proxy.LoadHtpasswd(file, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return users
}

// basic is a Proxy-Authorization value (RFC 7617).
func basic(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// sendRaw writes request to the proxy by hand (Go clients bypass proxies
// for loopback targets) and returns the response with its body read, and
// the connection, which the test's end closes.
func sendRaw(t *testing.T, proxyAddr, request string) (*http.Response, string, *tunnelConn) {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	method, _, _ := strings.Cut(request, " ")
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%.40q: %v", request, err)
	}
	if method == http.MethodConnect && resp.StatusCode == http.StatusOK {
		return resp, "", &tunnelConn{Conn: c, r: br} // the tunnel has begun: no body to read
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return resp, string(body), &tunnelConn{Conn: c, r: br}
}

// connectRequest is a CONNECT to dst with a Proxy-Authorization header,
// or none when auth is "".
func connectRequest(dst, auth string) string {
	req := "CONNECT " + dst + " HTTP/1.1\r\nHost: " + dst + "\r\n"
	if auth != "" {
		req += "Proxy-Authorization: " + auth + "\r\n"
	}
	return req + "\r\n"
}

// wantChallenge checks a 407 with the Basic challenge, after which the
// proxy closes the connection: nothing more can be sent on it, a TLS
// handshake with the registry server included.
func wantChallenge(t *testing.T, resp *http.Response, c net.Conn) {
	t.Helper()
	if resp.StatusCode != http.StatusProxyAuthRequired {
		t.Fatalf("status %d; want 407", resp.StatusCode)
	}
	if got, want := resp.Header.Get("Proxy-Authenticate"), `Basic realm="regproxy"`; got != want {
		t.Errorf("Proxy-Authenticate %q; want %q", got, want)
	}
	if resp.Request.Method != http.MethodConnect {
		return
	}
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after a 407 to CONNECT, read %d bytes, %v; want the connection closed (EOF)", n, err)
	}
}

// TestClientAuthPolicy: under --htpasswd a request without
// Proxy-Authorization gets 407 for CONNECTs (intercepted or tunnelled) and
// proxy requests, logged DENIED with status 407, while /ca.crt, /healthz
// and / stay open. A refused tunnel dials nothing, and credentials do not
// turn the port into a plain forward proxy.
func TestClientAuthPolicy(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, "127.0.0.1:0", echo)
	tp := startTunnelProxy(t, proxy.Config{Users: testUsers(t),
		Resolve: map[string]string{"echo.test:443": tg.ln.Addr().String()}}, "127.0.0.1:0")
	for _, tc := range []struct {
		name, request string
		want          int
		wantBody      string
	}{
		{"CONNECT to an intercepted registry", connectRequest("registry.test:443", ""), http.StatusProxyAuthRequired, ""},
		{"CONNECT to a tunnelled host", connectRequest("echo.test:443", ""), http.StatusProxyAuthRequired, ""},
		{"proxy request with an absolute URI", "GET http://echo.test/ HTTP/1.1\r\nHost: echo.test\r\n\r\n", http.StatusProxyAuthRequired, ""},
		{"proxy request with credentials", "GET http://echo.test/ HTTP/1.1\r\nHost: echo.test\r\nProxy-Authorization: " +
			basic("alice", alicePassword) + "\r\n\r\n", http.StatusForbidden, "only CONNECT"},
		{"GET /ca.crt", "GET /ca.crt HTTP/1.1\r\nHost: proxy\r\n\r\n", http.StatusOK, "BEGIN CERTIFICATE"},
		{"GET /healthz", "GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n", http.StatusOK, "ok"},
		// The help page shows that the port asks for credentials.
		{"GET /", "GET / HTTP/1.1\r\nHost: proxy:3128\r\n\r\n", http.StatusOK, "--proxy http://USER:PASSWORD@proxy:3128/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, c := sendRaw(t, tp.addr, tc.request)
			if tc.want == http.StatusProxyAuthRequired {
				wantChallenge(t, resp, c)
			} else if resp.StatusCode != tc.want || !strings.Contains(body, tc.wantBody) {
				t.Errorf("status %d, body %.80q; want %d and %q", resp.StatusCode, body, tc.want, tc.wantBody)
			}
		})
	}
	wantDenied(t, tp.log, "echo.test:443", "status=407")
	wantDenied(t, tp.log, "registry.test:443", "status=407")
	if n := tg.accepted.Load(); n != 0 {
		t.Errorf("refused CONNECTs reached the tunnel target %d times; want 0", n)
	}
}

// TestClientAuthCredentials: only a user and password of the htpasswd file
// open a CONNECT, to an intercepted registry or through a tunnel; the
// access log names the user and never the password or the header.
func TestClientAuthCredentials(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, "127.0.0.1:0", echo)
	tp := startTunnelProxy(t, proxy.Config{Users: testUsers(t),
		Resolve: map[string]string{"echo.test:443": tg.ln.Addr().String()}}, "127.0.0.1:0")
	right := basic("alice", alicePassword)
	for _, tc := range []struct {
		name, auth string
		want       int
	}{
		{"right password", right, http.StatusOK},
		{"scheme in lower case (RFC 9110, 11.1)", "basic " + strings.TrimPrefix(right, "Basic "), http.StatusOK},
		{"wrong password", basic("alice", "wrong"), http.StatusProxyAuthRequired},
		{"password of another user", basic("alice", bobPassword), http.StatusProxyAuthRequired},
		{"unknown user", basic("mallory", alicePassword), http.StatusProxyAuthRequired},
		{"user of an MD5 entry", basic("bob", bobPassword), http.StatusProxyAuthRequired},
		{"empty password", basic("alice", ""), http.StatusProxyAuthRequired},
		{"no colon", "Basic " + base64.StdEncoding.EncodeToString([]byte("alice")), http.StatusProxyAuthRequired},
		{"not base64", "Basic !!!", http.StatusProxyAuthRequired},
		{"Bearer", "Bearer " + alicePassword, http.StatusProxyAuthRequired},
	} {
		for _, dst := range []string{"registry.test:443", "echo.test:443"} {
			t.Run(tc.name+"/"+dst, func(t *testing.T) {
				resp, _, c := sendRaw(t, tp.addr, connectRequest(dst, tc.auth))
				switch {
				case tc.want == http.StatusProxyAuthRequired:
					wantChallenge(t, resp, c)
				case resp.StatusCode != tc.want:
					t.Fatalf("CONNECT %s: %d; want %d", dst, resp.StatusCode, tc.want)
				case dst == "echo.test:443":
					echoThrough(t, c, "ping")
				}
			})
		}
	}
	// The subtests' tunnels are closed: each is logged as it ended.
	waitLogLine(t, tp.log, regexp.MustCompile(`outcome=TUNNEL status=200 bytes=4 bytes_in=4 duration=\S+ user=alice\n`))
	for _, secret := range []string{alicePassword, bobPassword, strings.TrimPrefix(right, "Basic ")} {
		if strings.Contains(tp.log.String(), secret) {
			t.Errorf("the log shows %q", secret)
		}
	}
}

// TestClientAuthPull: a Go client whose proxy URL holds the user and
// password (http://user:pass@host:port, which Go sends as
// Proxy-Authorization on the CONNECT) pulls an image through an
// intercepted CONNECT; one with a wrong password or none is refused with
// 407 before any request reaches upstream.
func TestClientAuthPull(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	log := &syncBuffer{}
	e.users, e.logTo = testUsers(t), log
	e.restart()
	img := e.up.RandomImage(t, 2, 64<<10)
	e.up.Push(t, "team/app", "v1", img)
	want, _ := img.Digest()
	e.up.ResetCounts()
	ref, err := name.ParseReference(e.up.Host + "/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		user *url.Userinfo
	}{
		{"no credentials", nil},
		{"wrong password", url.UserPassword("alice", "wrong")},
		{"unknown user", url.UserPassword("mallory", alicePassword)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := e.transport()
			proxyURL := *e.proxyURL
			proxyURL.User = tc.user
			tr.Proxy = http.ProxyURL(&proxyURL)
			_, err := remote.Image(ref, remote.WithTransport(tr))
			if err == nil || !strings.Contains(err.Error(), http.StatusText(http.StatusProxyAuthRequired)) {
				t.Errorf("pull: %v; want %q", err, http.StatusText(http.StatusProxyAuthRequired))
			}
		})
	}
	if n := e.up.Total(); n != 0 {
		t.Fatalf("refused clients sent %d requests upstream; want 0", n)
	}
	e.proxyURL.User = url.UserPassword("alice", alicePassword)
	if got := e.pull("team/app", "v1"); got != want {
		t.Errorf("pull with credentials: digest %s; want %s", got, want)
	}
	if !strings.Contains(log.String(), "outcome=MISS") || !strings.Contains(log.String(), "user=alice") {
		t.Errorf("no access-log line of the pull naming user=alice:\n%s", log)
	}
}
