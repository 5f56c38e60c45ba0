package testupstream

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"path"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

var _ http.Handler = (*repos)(nil)

// ServeHTTP applies the repository table to blob, manifest and upload
// requests and passes the rest to the registry. The CDN's own reads in hub
// mode (cdn.go) pass unchecked: a CDN keys blobs by digest, and the
// registry hands out its URLs only after its own check.
func (s *repos) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := repoName(r.URL.Path)
	if name == "" || roleOf(r) == roleCDN {
		s.next.ServeHTTP(w, r)
		return
	}
	switch pathKind(r.URL.Path) {
	case "blob":
		s.serveBlob(w, r, name)
	case "manifest":
		s.serveManifest(w, r, name)
	case "upload":
		s.serveUpload(w, r, name)
	default:
		s.next.ServeHTTP(w, r)
	}
}

// serveBlob serves /v2/<name>/blobs/<digest>.
func (s *repos) serveBlob(w http.ResponseWriter, r *http.Request, name string) {
	d, err := v1.NewHash(path.Base(r.URL.Path))
	if err != nil {
		s.next.ServeHTTP(w, r) // the registry answers a bad digest
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if !s.hasBlob(name, d) {
			writeError(w, http.StatusNotFound, "BLOB_UNKNOWN")
			return
		}
		s.next.ServeHTTP(w, r)
	case http.MethodDelete:
		// Only the link goes, as in distribution: the registry's own
		// delete would take the bytes from every repository.
		if !s.dropBlob(name, d) {
			writeError(w, http.StatusNotFound, "BLOB_UNKNOWN")
			return
		}
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusAccepted)
	default:
		s.next.ServeHTTP(w, r)
	}
}

// serveManifest serves /v2/<name>/manifests/<reference>. The registry
// keeps manifests per repository already, but not the untagging of a
// manifest deleted by digest, so reads are checked against the table too.
func (s *repos) serveManifest(w http.ResponseWriter, r *http.Request, name string) {
	ref := path.Base(r.URL.Path)
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if !s.hasManifest(name, ref) {
			writeError(w, http.StatusNotFound, "MANIFEST_UNKNOWN")
			return
		}
		s.next.ServeHTTP(w, r)
	case http.MethodPut:
		s.putManifest(w, r, name, ref)
	case http.MethodDelete:
		if !s.hasManifest(name, ref) {
			writeError(w, http.StatusNotFound, "MANIFEST_UNKNOWN")
			return
		}
		s.next.ServeHTTP(onStatus(w, http.StatusAccepted, func() { s.dropManifest(name, ref) }), r)
	default:
		s.next.ServeHTTP(w, r)
	}
}

// putManifest checks a manifest PUT the way distribution does before it
// stores anything: the digest in the URL, if any, must be the body's, and
// the repository must hold everything the manifest names.
func (s *repos) putManifest(w http.ResponseWriter, r *http.Request, name, ref string) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "MANIFEST_INVALID")
		return
	}
	d, _, _ := v1.SHA256(bytes.NewReader(body))
	if h, err := v1.NewHash(ref); err == nil && h != d {
		writeError(w, http.StatusBadRequest, "DIGEST_INVALID")
		return
	}
	blobs, manifests, err := references(manifestType(r, body), body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "MANIFEST_INVALID")
		return
	}
	if _, missing := s.lacking(name, blobs, manifests); missing {
		writeError(w, http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN")
		return
	}
	r = r.Clone(r.Context())
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	s.next.ServeHTTP(onStatus(w, http.StatusCreated, func() { s.addManifest(name, d, ref) }), r)
}

// manifestType is the media type a manifest PUT declares: its Content-Type,
// or the body's mediaType field when the header is missing or generic, as
// distribution decides it.
func manifestType(r *http.Request, body []byte) types.MediaType {
	if ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err == nil && ct != "application/json" {
		return types.MediaType(ct)
	}
	var m struct {
		MediaType types.MediaType `json:"mediaType"`
	}
	json.Unmarshal(body, &m) // a body that is not JSON names nothing here
	return m.MediaType
}

// references returns what a manifest of type mt names and the repository
// must hold: for an image its config and layers (blobs), for an index its
// children (manifests, or blobs for a child that is no manifest). A layer
// that is not distributable and carries URLs is left out, since clients
// fetch it from the URLs and distribution does not require it. Other media
// types name nothing that is checked.
func references(mt types.MediaType, body []byte) (blobs, manifests []v1.Hash, err error) {
	switch {
	case mt.IsIndex():
		im, err := v1.ParseIndexManifest(bytes.NewReader(body))
		if err != nil {
			return nil, nil, err
		}
		for _, c := range im.Manifests {
			if c.MediaType.IsIndex() || c.MediaType.IsImage() {
				manifests = append(manifests, c.Digest)
			} else {
				blobs = append(blobs, c.Digest)
			}
		}
	case mt.IsImage():
		m, err := v1.ParseManifest(bytes.NewReader(body))
		if err != nil {
			return nil, nil, err
		}
		blobs = append(blobs, m.Config.Digest)
		for _, l := range m.Layers {
			if l.MediaType.IsDistributable() || len(l.URLs) == 0 {
				blobs = append(blobs, l.Digest)
			}
		}
	}
	return blobs, manifests, nil
}

// serveUpload serves /v2/<name>/blobs/uploads/[<id>]. Only requests that
// can finish a blob matter: a mount, a monolithic POST ?digest=, and the
// PUT ?digest= that ends an upload (after any PATCHes, with or without a
// final chunk in its body).
func (s *repos) serveUpload(w http.ResponseWriter, r *http.Request, name string) {
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodDelete && path.Base(r.URL.Path) != "uploads":
		// containers/image cancels the upload a failed mount started.
		// distribution answers 204; the registry would read the upload
		// id as a digest and answer 400. Its buffer, if any, stays.
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPost && q.Get("digest") == "" && q.Get("mount") != "" && q.Get("from") != "":
		// distribution tries a mount only with both parameters, and a
		// digest makes the POST a monolithic upload instead.
		s.mount(w, r, name, q.Get("mount"), q.Get("from"))
	case r.Method == http.MethodPost, r.Method == http.MethodPut:
		d, err := v1.NewHash(q.Get("digest"))
		if err != nil {
			s.next.ServeHTTP(w, r) // starts an upload, or fails on the digest
			return
		}
		s.next.ServeHTTP(onStatus(w, http.StatusCreated, func() { s.addBlob(name, d) }), r)
	default:
		s.next.ServeHTTP(w, r)
	}
}

// mount answers POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<from>
// with 201 and the blob's Location if from holds the blob. Otherwise the
// registry, which ignores mount, starts an ordinary upload (202): that is
// distribution's answer to a failed mount, and the client then uploads.
func (s *repos) mount(w http.ResponseWriter, r *http.Request, name, mount, from string) {
	d, err := v1.NewHash(mount)
	if err != nil || !s.link(from, name, d) {
		s.next.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Location", "/v2/"+name+"/blobs/"+d.String())
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

// onStatus returns w wrapped so that fn runs when the handler sends status
// want, before the status can reach the client: a client that sees 201
// for an upload and at once asks for the blob must find it. fn runs while
// the registry may hold its own lock, so it must not call the registry.
func onStatus(w http.ResponseWriter, want int, fn func()) http.ResponseWriter {
	return &statusHook{ResponseWriter: w, want: want, fn: fn}
}

type statusHook struct {
	http.ResponseWriter
	want int
	fn   func()
	sent bool // a final status went out
}

func (h *statusHook) WriteHeader(code int) {
	if !h.sent && code >= http.StatusOK { // 1xx answers are not final
		h.sent = true
		if code == h.want {
			h.fn()
		}
	}
	h.ResponseWriter.WriteHeader(code)
}

func (h *statusHook) Write(p []byte) (int, error) {
	if !h.sent {
		h.WriteHeader(http.StatusOK)
	}
	return h.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (h *statusHook) Unwrap() http.ResponseWriter { return h.ResponseWriter }
