package proxy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/regproxy/regproxy/proxy"
)

// TestIndexText: the plain page at / (what curl gets) shows the one-liner
// that sets up a node, for the address the request came to and with the
// fingerprint of the CA this proxy serves, computed here from /ca.crt as
// regproxy logs it. Under --htpasswd the command carries a placeholder
// user; a Host that could not be a proxy address shows as PROXY:3128.
func TestIndexText(t *testing.T) {
	t.Parallel()
	open := newEnv(t)
	guarded := newEnv(t)
	guarded.stop()
	guarded.users = testUsers(t)
	guarded.start()
	for _, tc := range []struct {
		name string
		e    *env
		host string // "" for the proxy's address
		want string // the command, with HOST and FP for the address and fingerprint
	}{
		{"open", open, "", "curl -fsS http://HOST/setup/docker | sh -s -- --ca-sha256 FP"},
		{"named", open, "proxy.corp:3128", "curl -fsS http://proxy.corp:3128/setup/docker | sh -s -- --ca-sha256 FP"},
		{"under htpasswd", guarded, "", "curl -fsS http://HOST/setup/docker | sh -s -- --ca-sha256 FP --proxy http://USER:PASSWORD@HOST/"},
		{"host that is no address", open, "x;reboot", "curl -fsS http://PROXY:3128/setup/docker | sh -s -- --ca-sha256 FP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fp := pemSHA256(t, tc.e.caPEM)
			body := getIndex(t, tc.e, tc.host)
			want := strings.NewReplacer("HOST", tc.e.proxyURL.Host, "FP", fp).Replace(tc.want)
			if !strings.Contains(body, "\n  "+want+"\n") {
				t.Errorf("GET /:\n%s\nwant the line\n  %s", body, want)
			}
			if !strings.Contains(body, "\n  ca_sha256="+fp+"\n") {
				t.Errorf("GET /:\n%s\nwant ca_sha256=%s", body, fp)
			}
			if strings.Contains(body, "HTTPS_PROXY") || strings.Contains(body, "update-ca-certificates") {
				t.Errorf("GET /:\n%s\nwant the script's one-liner, not the steps it takes", body)
			}
		})
	}
	if got, want := proxy.SetupCommand("p:3128", "podman", "ab"), "curl -fsS http://p:3128/setup/podman | sh -s -- --ca-sha256 ab"; got != want {
		t.Errorf("SetupCommand = %q, want %q", got, want)
	}
}

// getIndex GETs / from e's proxy port as curl does, naming host in the
// Host header ("" for the port's address), and returns the body.
func getIndex(t *testing.T, e *env, host string) string {
	t.Helper()
	req, err := http.NewRequest("GET", e.proxyURL.String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	req.Header.Set("Accept", "*/*")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /: %d %s, %v", resp.StatusCode, resp.Header.Get("Content-Type"), err)
	}
	return string(body)
}

// pemSHA256 is the fingerprint of the one certificate in caPEM: lowercase
// hex of the SHA-256 of its DER.
func pemSHA256(t *testing.T, caPEM []byte) string {
	t.Helper()
	block, _ := pem.Decode(caPEM)
	if block == nil {
		t.Fatal("no PEM block in the CA")
	}
	sum := sha256.Sum256(block.Bytes)
	return hex.EncodeToString(sum[:])
}
