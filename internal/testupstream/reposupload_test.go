package testupstream

import (
	"bytes"
	"crypto/rand"
	"net/http"
	"net/url"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// uploader plays a client that pushes one blob into repo, as
// containers/image (skopeo, podman) and ggcr do.
type uploader struct {
	t    *testing.T
	u    *Upstream
	repo string
	blob []byte
	d    v1.Hash
}

// post starts an upload (or mounts, or uploads whole) with query q.
func (up *uploader) post(q url.Values, body []byte) *http.Response {
	up.t.Helper()
	target := "https://" + up.u.Host + "/v2/" + up.repo + "/blobs/uploads/?" + q.Encode()
	return send(up.t, up.u, "POST", target, "application/octet-stream", body, nil)
}

// next sends method to the Location of prev, adding ?digest= if
// withDigest.
func (up *uploader) next(prev *http.Response, method string, body []byte, withDigest bool) *http.Response {
	up.t.Helper()
	loc, err := prev.Location()
	if err != nil {
		up.t.Fatalf("%s %s: no Location: %v", prev.Request.Method, prev.Request.URL, err)
	}
	if withDigest {
		q := loc.Query()
		q.Set("digest", up.d.String())
		loc.RawQuery = q.Encode()
	}
	return send(up.t, up.u, method, loc.String(), "application/octet-stream", body, nil)
}

func TestRepoScopedUploads(t *testing.T) {
	t.Parallel()
	u := Start(t, WithRepoScopedBlobs())
	img := u.RandomImage(t, 1, 64)
	u.Push(t, "a", "v1", img)
	mountable := blobsOf(t, img)[1]
	start := url.Values{}
	for _, tc := range []struct {
		desc string
		// flow pushes up.blob (or mounts up.d) and returns the last answer.
		flow func(up *uploader) *http.Response
		code int
		held bool
	}{
		{"POST, PATCH, PUT ?digest= (containers/image)", func(up *uploader) *http.Response {
			return up.next(up.next(up.post(start, nil), "PATCH", up.blob, false), "PUT", nil, true)
		}, 201, true},
		{"POST, PUT ?digest= with the body", func(up *uploader) *http.Response {
			return up.next(up.post(start, nil), "PUT", up.blob, true)
		}, 201, true},
		{"POST, PATCH, PUT ?digest= with the final chunk", func(up *uploader) *http.Response {
			half := len(up.blob) / 2
			return up.next(up.next(up.post(start, nil), "PATCH", up.blob[:half], false), "PUT", up.blob[half:], true)
		}, 201, true},
		{"monolithic POST ?digest=", func(up *uploader) *http.Response {
			return up.post(url.Values{"digest": {up.d.String()}}, up.blob)
		}, 201, true},
		{"PUT with a wrong digest", func(up *uploader) *http.Response {
			return up.next(up.post(start, nil), "PUT", up.blob[1:], true)
		}, 400, false},
		{"mount from a repository that holds it", func(up *uploader) *http.Response {
			up.d = mountable
			resp := up.post(url.Values{"mount": {up.d.String()}, "from": {"a"}}, nil)
			if loc := resp.Header.Get("Location"); loc != "/v2/"+up.repo+"/blobs/"+up.d.String() {
				up.t.Errorf("Location = %q, want the blob in %s", loc, up.repo)
			}
			return resp
		}, 201, true},
		{"mount from a repository that lacks it starts an upload", func(up *uploader) *http.Response {
			resp := up.post(url.Values{"mount": {up.d.String()}, "from": {"a"}}, nil)
			if resp.StatusCode != 202 || up.u.Holds(up.repo, up.d.String()) {
				up.t.Errorf("mount: %s, held %v, want 202 and not held", resp.Status, up.u.Holds(up.repo, up.d.String()))
			}
			return up.next(up.next(resp, "PATCH", up.blob, false), "PUT", nil, true)
		}, 201, true},
		{"skopeo: failed mount, cancel, then upload", func(up *uploader) *http.Response {
			started := up.post(url.Values{"mount": {up.d.String()}, "from": {"a"}}, nil)
			if resp := up.next(started, "DELETE", nil, false); resp.StatusCode != http.StatusNoContent {
				up.t.Errorf("cancel the upload: %s, want 204", resp.Status)
			}
			return up.next(up.next(up.post(start, nil), "PATCH", up.blob, false), "PUT", nil, true)
		}, 201, true},
		{"mount without from starts an upload", func(up *uploader) *http.Response {
			up.d = mountable
			return up.post(url.Values{"mount": {up.d.String()}}, nil)
		}, 202, false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			blob := []byte(rand.Text())
			d, _, _ := v1.SHA256(bytes.NewReader(blob))
			up := &uploader{t: t, u: u, repo: "up/" + rand.Text(), blob: blob, d: d}
			if resp := tc.flow(up); resp.StatusCode != tc.code {
				t.Errorf("got %s, want %d", resp.Status, tc.code)
			}
			checkHolds(t, u, up.repo, tc.held, up.d.String())
			want := map[bool]int{true: 200, false: 404}[tc.held]
			if resp := send(t, u, "HEAD", "https://"+u.Host+"/v2/"+up.repo+"/blobs/"+up.d.String(), "", nil, nil); resp.StatusCode != want {
				t.Errorf("HEAD blob after: %s, want %d", resp.Status, want)
			}
		})
	}
}
