package testupstream

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// client is what a regproxy test builds by hand: roots from CertPool and a
// dial override from Host to Addr.
func client(t *testing.T, u *Upstream) *http.Client {
	t.Helper()
	var d net.Dialer
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: u.CertPool()},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr != u.Host {
				t.Errorf("dial %s, want %s", addr, u.Host)
			}
			return d.DialContext(ctx, network, u.Addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func get(t *testing.T, c *http.Client, method, url string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestStart(t *testing.T) {
	t.Parallel()
	u := Start(t)
	if got, want := u.Host, "registry.test:"+u.Port; got != want {
		t.Errorf("Host = %q, want %q", got, want)
	}
	if got, want := u.Resolve(), "registry.test:"+u.Port+"=127.0.0.1:"+u.Port; got != want {
		t.Errorf("Resolve() = %q, want %q", got, want)
	}
	pem, err := os.ReadFile(u.CAFile)
	if err != nil || string(pem) != string(u.CAPEM) {
		t.Errorf("CAFile holds %q (%v), want CAPEM", pem, err)
	}

	img := u.RandomImage(t, 2, 1024)
	u.Push(t, "library/app", "v1", img)
	if got := u.Total(); got != 0 {
		t.Errorf("Total after Push = %d, want 0", got)
	}

	c := client(t, u)
	resp := get(t, c, "GET", "https://"+u.Host+"/v2/library/app/manifests/v1")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest: %s", resp.Status)
	}
	want, _ := img.RawManifest()
	if got, _ := io.ReadAll(resp.Body); string(got) != string(want) {
		t.Errorf("manifest = %s, want %s", got, want)
	}
	if got := u.Count("GET manifest"); got != 1 {
		t.Errorf(`Count("GET manifest") = %d, want 1`, got)
	}
	if got := u.CountPath("GET", "/v2/library/app/manifests/v1"); got != 1 {
		t.Errorf("CountPath = %d, want 1", got)
	}
	if got := u.Total(); got != 1 {
		t.Errorf("Total = %d, want 1", got)
	}
	u.ResetCounts()
	if got := u.Count("GET manifest"); got != 0 {
		t.Errorf("Count after ResetCounts = %d, want 0", got)
	}
}

func TestWithHostName(t *testing.T) {
	t.Parallel()
	u := Start(t, WithHostName("registry2.test"))
	if got, want := u.Host, "registry2.test:"+u.Port; got != want {
		t.Errorf("Host = %q, want %q", got, want)
	}
	if resp := get(t, client(t, u), "GET", "https://"+u.Host+"/v2/"); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/: %s", resp.Status)
	}
	if got := u.Count("GET ping"); got != 1 {
		t.Errorf(`Count("GET ping") = %d, want 1`, got)
	}
}

func TestFailWith(t *testing.T) {
	t.Parallel()
	u := Start(t)
	u.Push(t, "app", "v1", u.RandomImage(t, 1, 100))
	c := client(t, u)
	url := "https://" + u.Host + "/v2/app/manifests/v1"

	u.SetFault(FailWith(http.StatusServiceUnavailable, "GET manifest"))
	resp := get(t, c, "GET", url)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("GET manifest: %s, want 503", resp.Status)
	}
	var body struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || len(body.Errors) != 1 || body.Errors[0].Code != "UNKNOWN" {
		t.Errorf("error body = %+v (%v), want one UNKNOWN error", body, err)
	}
	if resp := get(t, c, "HEAD", url); resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD manifest: %s, want 200 (not a faulted kind)", resp.Status)
	}
	u.SetFault(nil)
	if resp := get(t, c, "GET", url); resp.StatusCode != http.StatusOK {
		t.Errorf("GET manifest after SetFault(nil): %s", resp.Status)
	}
	if got := u.Count("GET manifest"); got != 2 {
		t.Errorf(`Count("GET manifest") = %d, want 2 (faulted requests count)`, got)
	}
}

func TestCutBlobAfter(t *testing.T) {
	t.Parallel()
	u := Start(t)
	img := u.RandomImage(t, 1, 4096)
	u.Push(t, "app", "v1", img)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	dig, _ := layers[0].Digest()
	size, _ := layers[0].Size()

	u.SetFault(CutBlobAfter(100))
	resp := get(t, client(t, u), "GET", "https://"+u.Host+"/v2/app/blobs/"+dig.String())
	if resp.StatusCode != http.StatusOK || resp.ContentLength != size {
		t.Fatalf("GET blob: %s, Content-Length %d, want 200 and %d", resp.Status, resp.ContentLength, size)
	}
	got, err := io.ReadAll(resp.Body)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read blob: %v, want %v", err, io.ErrUnexpectedEOF)
	}
	if len(got) != 100 {
		t.Errorf("read %d bytes, want 100", len(got))
	}
	if got := u.Count("GET blob"); got != 1 {
		t.Errorf(`Count("GET blob") = %d, want 1`, got)
	}
}

func TestKind(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ method, path, want string }{
		{"GET", "/v2/", "GET ping"},
		{"GET", "/v2", "GET ping"},
		{"HEAD", "/v2/a/b/manifests/latest", "HEAD manifest"},
		{"GET", "/v2/a/blobs/sha256:abc", "GET blob"},
		{"GET", "/v2/blobs/blobs/sha256:abc", "GET blob"},
		{"POST", "/v2/a/blobs/uploads/", "POST upload"},
		{"PATCH", "/v2/a/blobs/uploads/123", "PATCH upload"},
		{"GET", "/v2/a/tags/list", "GET tags"},
		{"GET", "/v2/_catalog", "GET other"},
		{"GET", "/v2/blobs/sha256:abc", "GET other"},
		{"GET", "/token", "GET other"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			t.Parallel()
			if got := Kind(httptest.NewRequest(tc.method, tc.path, nil)); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestPushIndex(t *testing.T) {
	t.Parallel()
	u := Start(t)
	idx, err := random.Index(256, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	u.PushIndex(t, "multi", "latest", idx)
	resp := get(t, u.Client(), "GET", "https://"+u.Host+"/v2/multi/manifests/latest")
	want, _ := idx.RawManifest()
	if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || string(got) != string(want) {
		t.Errorf("GET index: %s %s, want 200 %s", resp.Status, got, want)
	}
}

func TestTransportRefusesOtherHosts(t *testing.T) {
	t.Parallel()
	u := Start(t)
	for _, host := range []string{"example.com:" + u.Port, "registry.test:1", u.Addr} {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "https://"+host+"/v2/", nil)
		if resp, err := u.Client().Do(req); err == nil {
			resp.Body.Close()
			t.Errorf("GET via %s succeeded, want a refused dial", host)
		}
	}
}
