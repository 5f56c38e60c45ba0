package testupstream

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"time"
)

// serveCDN serves GET and HEAD /blobs/{digest} with any query, the way a
// CDN behind a signed URL does: no Authorization needed, full Range support
// (http.ServeContent, RFC 9110 section 14) and an ETag, but none of the
// registry's headers such as Docker-Content-Digest. The bytes come from the
// plain registry, which keys blobs by digest alone.
func (h *hub) serveCDN(w http.ResponseWriter, r *http.Request) {
	dig := r.PathValue("digest")
	get, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "/v2/cdn/blobs/"+dig, nil)
	if err != nil {
		writeError(w, http.StatusBadRequest, "NAME_INVALID")
		return
	}
	rec := httptest.NewRecorder()
	h.inner.ServeHTTP(rec, get)
	if rec.Code != http.StatusOK {
		writeError(w, rec.Code, errorCode(rec.Code, "blob"))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+dig+`"`)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(rec.Body.Bytes()))
}
