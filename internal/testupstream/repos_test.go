package testupstream

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// send makes one request through Transport, without following redirects,
// with body (if any) as the Content-Type ctype.
func send(t *testing.T, u *Upstream, method, target, ctype string, body []byte, header http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, target, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	c := &http.Client{
		Transport:     u.Transport(),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// errCode returns the code of the first OCI error in resp's body, or "".
func errCode(resp *http.Response) string {
	var body struct{ Errors []struct{ Code string } }
	if json.NewDecoder(resp.Body).Decode(&body) != nil || len(body.Errors) == 0 {
		return ""
	}
	return body.Errors[0].Code
}

// blobsOf returns the digests of img's config and layers.
func blobsOf(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ds := []v1.Hash{cfg}
	for _, l := range layers {
		d, _ := l.Digest()
		ds = append(ds, d)
	}
	return ds
}

// checkHolds fails unless repo holds (or, with want false, lacks) every
// ref.
func checkHolds(t *testing.T, u *Upstream, repo string, want bool, refs ...string) {
	t.Helper()
	for _, ref := range refs {
		if got := u.Holds(repo, ref); got != want {
			t.Errorf("Holds(%q, %q) = %v, want %v", repo, ref, got, want)
		}
	}
}

func strs(ds []v1.Hash) []string {
	var s []string
	for _, d := range ds {
		s = append(s, d.String())
	}
	return s
}

func TestRepoScopedReads(t *testing.T) {
	t.Parallel()
	scoped, plain := Start(t, WithRepoScopedBlobs()), Start(t)
	img := scoped.RandomImage(t, 2, 512)
	scoped.Push(t, "a", "v1", img)
	plain.Push(t, "a", "v1", img)
	blobs := blobsOf(t, img)
	cfg, layer, mf := blobs[0].String(), blobs[1].String(), digestOf(img).String()

	for _, tc := range []struct {
		desc         string
		u            *Upstream
		method, path string
		code         int
		errCode      string // checked for GET only: HEAD has no body
	}{
		{"layer HEAD in a", scoped, "HEAD", "/v2/a/blobs/" + layer, 200, ""},
		{"layer GET in a", scoped, "GET", "/v2/a/blobs/" + layer, 200, ""},
		{"layer HEAD in b", scoped, "HEAD", "/v2/b/blobs/" + layer, 404, ""},
		{"layer GET in b", scoped, "GET", "/v2/b/blobs/" + layer, 404, "BLOB_UNKNOWN"},
		{"config GET in b", scoped, "GET", "/v2/b/blobs/" + cfg, 404, "BLOB_UNKNOWN"},
		{"manifest by digest in a", scoped, "GET", "/v2/a/manifests/" + mf, 200, ""},
		{"manifest by digest in b", scoped, "GET", "/v2/b/manifests/" + mf, 404, "MANIFEST_UNKNOWN"},
		{"manifest HEAD by digest in b", scoped, "HEAD", "/v2/b/manifests/" + mf, 404, ""},
		{"tag in b", scoped, "GET", "/v2/b/manifests/v1", 404, "MANIFEST_UNKNOWN"},
		{"bad digest is the registry's answer", scoped, "GET", "/v2/a/blobs/sha256:nothex", 400, "NAME_INVALID"},
		// Why the option exists: go-containerregistry's store is global.
		{"layer HEAD in b without the option", plain, "HEAD", "/v2/b/blobs/" + layer, 200, ""},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			resp := send(t, tc.u, tc.method, "https://"+tc.u.Host+tc.path, "", nil, nil)
			if resp.StatusCode != tc.code {
				t.Errorf("got %s, want %d", resp.Status, tc.code)
			}
			if got := errCode(resp); tc.method == "GET" && got != tc.errCode {
				t.Errorf("error code %q, want %q", got, tc.errCode)
			}
		})
	}
	checkHolds(t, scoped, "a", true, append(strs(blobs), mf, "v1")...)
	checkHolds(t, scoped, "b", false, append(strs(blobs), mf, "v1")...)
}

// TestRepoScopedWrite pushes to b an image that a holds, the way a client
// does: HEAD each blob, get 404, then mount or upload.
func TestRepoScopedWrite(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc    string
		pulled  bool  // write the image as pulled from a, whose blobs ggcr mounts
		patches int64 // uploads that carried bytes, out of 3 blobs
	}{
		{"in memory: uploads", false, 3},
		{"pulled from a: mounts", true, 0},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			u := Start(t, WithRepoScopedBlobs())
			img := u.RandomImage(t, 2, 1024)
			u.Push(t, "a", "v1", img)
			if tc.pulled {
				var err error
				if img, err = remote.Image(u.tag(t, "a", "v1"), pullOptions(t, u)...); err != nil {
					t.Fatal(err)
				}
				u.ResetCounts()
			}
			if err := remote.Write(u.tag(t, "b", "v1"), img, pullOptions(t, u)...); err != nil {
				t.Fatalf("write to b: %v", err)
			}
			blobs := blobsOf(t, img)
			checkHolds(t, u, "b", true, append(strs(blobs), digestOf(img).String(), "v1")...)
			if got := u.Count("HEAD blob"); got != 3 {
				t.Errorf(`Count("HEAD blob") = %d, want 3 (one 404 per blob)`, got)
			}
			if got := u.Count("POST upload"); got != 3 {
				t.Errorf(`Count("POST upload") = %d, want 3`, got)
			}
			if got := u.Count("PATCH upload"); got != tc.patches {
				t.Errorf(`Count("PATCH upload") = %d, want %d`, got, tc.patches)
			}
			if resp := send(t, u, "HEAD", "https://"+u.Host+"/v2/b/blobs/"+blobs[1].String(), "", nil, nil); resp.StatusCode != 200 {
				t.Errorf("HEAD layer in b after the write: %s, want 200", resp.Status)
			}
		})
	}
}

func TestRepoScopedManifestPut(t *testing.T) {
	t.Parallel()
	u := Start(t, WithRepoScopedBlobs())
	img := u.RandomImage(t, 1, 256)
	u.Push(t, "a", "v1", img)
	raw, _ := img.RawManifest()
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img})
	rawIdx, _ := idx.RawManifest()
	cfg := blobsOf(t, img)[0]
	foreign := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",` +
		`"config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"` + cfg.String() + `"},` +
		`"layers":[{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","size":1,` +
		`"digest":"sha256:` + strings.Repeat("ab", 32) + `","urls":["https://example.com/layer"]}]}`)
	const docker = string(types.DockerManifestSchema2)

	for _, tc := range []struct {
		desc, repo, ref, ctype string
		body                   []byte
		code                   int
		errCode                string
	}{
		{"image to c, which lacks its blobs", "c", "v1", docker, raw, 400, "MANIFEST_BLOB_UNKNOWN"},
		{"image to c, type from the body", "c", "v2", "application/json", raw, 400, "MANIFEST_BLOB_UNKNOWN"},
		{"image to a, which holds its blobs", "a", "v2", docker, raw, 201, ""},
		{"index to c, which lacks its child", "c", "idx", string(types.OCIImageIndex), rawIdx, 400, "MANIFEST_BLOB_UNKNOWN"},
		{"index to a, which holds its child", "a", "idx", string(types.OCIImageIndex), rawIdx, 201, ""},
		{"foreign layer with URLs need not be held", "a", "foreign", docker, foreign, 201, ""},
		{"digest in the URL is not the body's", "a", "sha256:" + strings.Repeat("0", 64), docker, raw, 400, "DIGEST_INVALID"},
		{"not JSON", "a", "bad", docker, []byte("{"), 400, "MANIFEST_INVALID"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			resp := send(t, u, "PUT", "https://"+u.Host+"/v2/"+tc.repo+"/manifests/"+tc.ref, tc.ctype, tc.body, nil)
			if got := errCode(resp); resp.StatusCode != tc.code || got != tc.errCode {
				t.Errorf("got %s %q, want %d %q", resp.Status, got, tc.code, tc.errCode)
			}
			checkHolds(t, u, tc.repo, tc.code == 201, tc.ref)
		})
	}
}

// TestRepoScopedDelete runs its steps in order: each depends on the last.
func TestRepoScopedDelete(t *testing.T) {
	t.Parallel()
	u := Start(t, WithRepoScopedBlobs())
	img := u.RandomImage(t, 1, 256)
	for _, repo := range []string{"a", "d", "e"} {
		u.Push(t, repo, "v1", img)
	}
	mf, layer := digestOf(img).String(), blobsOf(t, img)[1].String()
	for _, step := range []struct {
		desc, method, path string
		code               int
		errCode            string
	}{
		{"delete a's manifest by digest", "DELETE", "/v2/a/manifests/" + mf, 202, ""},
		{"a's manifest by digest is gone", "GET", "/v2/a/manifests/" + mf, 404, "MANIFEST_UNKNOWN"},
		{"a's tag went with it", "GET", "/v2/a/manifests/v1", 404, "MANIFEST_UNKNOWN"},
		{"deleting it again", "DELETE", "/v2/a/manifests/" + mf, 404, "MANIFEST_UNKNOWN"},
		{"d keeps the manifest", "GET", "/v2/d/manifests/v1", 200, ""},
		{"a keeps the layer", "GET", "/v2/a/blobs/" + layer, 200, ""},
		{"delete a's layer", "DELETE", "/v2/a/blobs/" + layer, 202, ""},
		{"a's layer is gone", "GET", "/v2/a/blobs/" + layer, 404, "BLOB_UNKNOWN"},
		{"d keeps the layer's bytes", "GET", "/v2/d/blobs/" + layer, 200, ""},
		{"deleting a's layer again", "DELETE", "/v2/a/blobs/" + layer, 404, "BLOB_UNKNOWN"},
		{"delete e's tag", "DELETE", "/v2/e/manifests/v1", 202, ""},
		{"e's tag is gone", "GET", "/v2/e/manifests/v1", 404, "MANIFEST_UNKNOWN"},
		{"e keeps the manifest by digest", "GET", "/v2/e/manifests/" + mf, 200, ""},
	} {
		resp := send(t, u, step.method, "https://"+u.Host+step.path, "", nil, nil)
		if got := errCode(resp); resp.StatusCode != step.code || got != step.errCode {
			t.Errorf("%s: got %s %q, want %d %q", step.desc, resp.Status, got, step.code, step.errCode)
		}
	}
	checkHolds(t, u, "a", false, mf, "v1", layer)
	checkHolds(t, u, "d", true, mf, "v1", layer)
	checkHolds(t, u, "e", false, "v1")
	checkHolds(t, u, "e", true, mf)
}

// TestRepoScopedPush checks that the fixture's own pushes fill the table,
// with and without hub mode.
func TestRepoScopedPush(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc string
		opts []Option
	}{
		{"plain", nil},
		{"hub", []Option{WithHub()}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			u := Start(t, append(tc.opts, WithRepoScopedBlobs())...)
			img := u.RandomImage(t, 2, 128)
			u.Push(t, "public/img", "v1", img)
			checkHolds(t, u, "public/img", true, append(strs(blobsOf(t, img)), digestOf(img).String(), "v1")...)

			idx, err := random.Index(128, 1, 2)
			if err != nil {
				t.Fatal(err)
			}
			u.PushIndex(t, "public/idx", "v1", idx)
			d, _ := idx.Digest()
			refs := []string{d.String(), "v1"}
			im, _ := idx.IndexManifest()
			for _, desc := range im.Manifests {
				child, err := idx.Image(desc.Digest)
				if err != nil {
					t.Fatal(err)
				}
				refs = append(refs, desc.Digest.String())
				refs = append(refs, strs(blobsOf(t, child))...)
			}
			checkHolds(t, u, "public/idx", true, refs...)
			checkHolds(t, u, "public/img", false, append(refs[:1:1], refs[2:]...)...) // not "v1": both have it
		})
	}
}

func TestRepoScopedHub(t *testing.T) {
	t.Parallel()
	u := Start(t, WithHub(), WithRepoScopedBlobs())
	img := u.RunnableImage(t, 2)
	u.Push(t, "public/app", "v1", img)
	layer := blobsOf(t, img)[1].String()
	app := bearer(token(t, u, "repository:public/app:pull", "", ""))
	other := bearer(token(t, u, "repository:public/other:pull", "", ""))

	for _, tc := range []struct {
		desc, method, path string
		header             http.Header
		code               int
		errCode            string
	}{
		{"GET blob where held: redirect", "GET", "/v2/public/app/blobs/" + layer, app, 307, ""},
		{"GET blob where not held: 404, no redirect", "GET", "/v2/public/other/blobs/" + layer, other, 404, "BLOB_UNKNOWN"},
		{"HEAD blob where not held", "HEAD", "/v2/public/other/blobs/" + layer, other, 404, ""},
		{"GET manifest where not held", "GET", "/v2/public/other/manifests/" + digestOf(img).String(), other, 404, "MANIFEST_UNKNOWN"},
		{"token check first", "GET", "/v2/public/other/blobs/" + layer, nil, 401, "UNAUTHORIZED"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			resp := send(t, u, tc.method, "https://"+u.Host+tc.path, "", nil, tc.header)
			if got := errCode(resp); resp.StatusCode != tc.code || (tc.method == "GET" && got != tc.errCode) {
				t.Errorf("got %s %q, want %d %q", resp.Status, got, tc.code, tc.errCode)
			}
		})
	}

	// The CDN behind the redirect still serves the bytes.
	ref, err := name.NewTag(u.Host + "/public/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(ref, pullOptions(t, u)...)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := got.Layers()
	for _, l := range layers {
		rc, err := l.Compressed() // via the CDN; checks the digest at EOF
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Errorf("pull a layer of public/app: %v", err)
		}
	}
	if got := u.Count("GET cdn"); got != 2 {
		t.Errorf(`Count("GET cdn") = %d, want 2`, got)
	}
}

func TestHoldsNeedsTheOption(t *testing.T) {
	t.Parallel()
	u := Start(t)
	defer func() {
		if recover() == nil {
			t.Errorf("Holds without WithRepoScopedBlobs did not panic")
		}
	}()
	u.Holds("a", "v1")
}
