package testupstream

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// firstLayer returns the digest and compressed bytes of img's first layer.
func firstLayer(t *testing.T, img v1.Image) (v1.Hash, []byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	dig, _ := layers[0].Digest()
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	blob, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return dig, blob
}

func TestHubBlobRedirect(t *testing.T) {
	t.Parallel()
	u, img := hubWithImage(t)
	dig, blob := firstLayer(t, img)
	auth := bearer(token(t, u, "repository:public/app:pull", "", ""))
	blobURL := "https://" + u.Host + "/v2/public/app/blobs/" + dig.String()

	head := hubDo(t, u, "HEAD", blobURL, auth)
	if head.StatusCode != http.StatusOK || head.ContentLength != int64(len(blob)) || head.Header.Get("Docker-Content-Digest") != dig.String() {
		t.Errorf("HEAD blob: %s, Content-Length %d, digest %q, want 200, %d, %s",
			head.Status, head.ContentLength, head.Header.Get("Docker-Content-Digest"), len(blob), dig)
	}

	var locs []*url.URL
	for range 2 {
		resp := hubDo(t, u, "GET", blobURL, auth)
		loc, err := resp.Location()
		if resp.StatusCode != http.StatusTemporaryRedirect || err != nil {
			t.Fatalf("GET blob: %s, Location %v, want 307", resp.Status, err)
		}
		if loc.Host != u.CDNHost() || loc.Path != "/blobs/"+dig.String() || loc.Query().Get("sig") == "" || loc.Query().Get("expires") == "" {
			t.Errorf("Location = %s, want https://%s/blobs/%s?sig=…&expires=…", loc, u.CDNHost(), dig)
		}
		locs = append(locs, loc)
	}
	if locs[0].String() == locs[1].String() {
		t.Errorf("two redirects to the same URL %s, want a fresh sig each time", locs[0])
	}
	if resp := hubDo(t, u, "GET", "https://"+u.Host+"/v2/public/app/blobs/sha256:"+string(bytes.Repeat([]byte("0"), 64)), auth); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET unknown blob: %s, want 404", resp.Status)
	}

	for _, tc := range []struct {
		desc, rng string
		header    http.Header
		code      int
		want      []byte
	}{
		{"whole", "", nil, http.StatusOK, blob},
		{"range", "bytes=10-19", nil, http.StatusPartialContent, blob[10:20]},
		{"open range", "bytes=100-", nil, http.StatusPartialContent, blob[100:]},
		{"with authorization", "", auth, http.StatusOK, blob},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			h := tc.header.Clone()
			if tc.rng != "" {
				h = http.Header{"Range": {tc.rng}}
			}
			resp := hubDo(t, u, "GET", locs[0].String(), h)
			got, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != tc.code || resp.ContentLength != int64(len(tc.want)) || !bytes.Equal(got, tc.want) {
				t.Errorf("got %s, Content-Length %d, %d bytes (%v), want %d and %d bytes",
					resp.Status, resp.ContentLength, len(got), err, tc.code, len(tc.want))
			}
		})
	}
	if got := u.Count("GET cdn"); got != 4 {
		t.Errorf(`Count("GET cdn") = %d, want 4`, got)
	}
	if got := u.CDNSawAuthorization(); got != 1 {
		t.Errorf("CDNSawAuthorization() = %d, want 1", got)
	}
	if got := u.CountHost("registry.test"); got != 4 {
		t.Errorf(`CountHost("registry.test") = %d, want 4`, got)
	}
	u.ResetCounts()
	if got := u.CDNSawAuthorization() + u.CountHost("cdn.test"); got != 0 {
		t.Errorf("CDN counters after ResetCounts = %d, want 0", got)
	}

	// net/http's Client drops Authorization on a redirect to another host.
	req, _ := http.NewRequestWithContext(t.Context(), "GET", blobURL, nil)
	req.Header = auth
	resp, err := u.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || !bytes.Equal(got, blob) {
		t.Errorf("GET blob following the redirect: %s, %d bytes, want 200 and %d", resp.Status, len(got), len(blob))
	}
	if got := u.CDNSawAuthorization(); got != 0 {
		t.Errorf("CDNSawAuthorization() after a followed redirect = %d, want 0", got)
	}
}

func TestHubFaults(t *testing.T) {
	t.Parallel()
	u, img := hubWithImage(t)
	dig, blob := firstLayer(t, img)
	ref, err := name.NewDigest(u.Host + "/public/app@" + dig.String())
	if err != nil {
		t.Fatal(err)
	}
	fetch := func() ([]byte, error) {
		l, err := remote.Layer(ref, remote.WithTransport(u.Transport()), remote.WithAuth(authn.Anonymous), remote.WithContext(t.Context()))
		if err != nil {
			return nil, err
		}
		rc, err := l.Compressed()
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}

	u.SetFault(FailWith(http.StatusForbidden, "GET token")) // remote retries 5xx
	if _, err := fetch(); err == nil {
		t.Errorf("fetch with a failing token server succeeded")
	}
	if got := u.Count("GET token"); got != 1 {
		t.Errorf(`Count("GET token") = %d, want 1 (faulted requests count)`, got)
	}

	u.SetFault(CutBlobAfter(100)) // cuts the CDN's answer, not the redirect
	if got, err := fetch(); !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != 100 {
		t.Errorf("fetch with CutBlobAfter(100): %d bytes, %v, want 100 and %v", len(got), err, io.ErrUnexpectedEOF)
	}
	u.SetFault(nil)
	if got, err := fetch(); err != nil || !bytes.Equal(got, blob) {
		t.Errorf("fetch after SetFault(nil): %d bytes, %v, want %d", len(got), err, len(blob))
	}
}
