package testupstream

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
)

// Fault is a hook that runs before the registry for every request, after
// the request was counted. It returns true if it handled the request, or
// false to let the registry answer.
type Fault func(w http.ResponseWriter, r *http.Request) bool

// SetFault installs f for the requests that arrive from now on; nil clears
// it. A func literal of the right shape can be passed directly.
func (u *Upstream) SetFault(f Fault) {
	if f == nil {
		u.fault.Store(nil)
		return
	}
	u.fault.Store(&f)
}

// nextKey holds the registry handler in the context of a request given to a
// Fault, so that a Fault like CutBlobAfter can run the real response.
type nextKey struct{}

// FailWith returns a Fault that answers status with an OCI error body for
// requests whose Kind is one of kinds, such as "GET manifest" or
// "HEAD manifest". With no kinds it fails every request.
func FailWith(status int, kinds ...string) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		kind := Kind(r)
		if len(kinds) > 0 && !slices.Contains(kinds, kind) {
			return false
		}
		writeError(w, status, errorCode(status, pathKind(r.URL.Path)))
		return true
	}
}

// writeError writes the error body of the OCI distribution spec
// (https://github.com/opencontainers/distribution-spec/blob/main/spec.md#error-codes).
func writeError(w http.ResponseWriter, status int, code string) {
	type ociError struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	body, _ := json.Marshal(struct {
		Errors []ociError `json:"errors"`
	}{[]ociError{{Code: code, Message: http.StatusText(status)}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body) // HEAD drops the body; the headers still say what failed
}

// errorCode picks the OCI error code a registry would send with status.
func errorCode(status int, kind string) string {
	switch status {
	case http.StatusUnauthorized:
		return "UNAUTHORIZED"
	case http.StatusForbidden:
		return "DENIED"
	case http.StatusTooManyRequests:
		return "TOOMANYREQUESTS"
	case http.StatusNotFound:
		switch kind {
		case "manifest":
			return "MANIFEST_UNKNOWN"
		case "blob":
			return "BLOB_UNKNOWN"
		}
		return "NAME_UNKNOWN"
	}
	return "UNKNOWN" // the spec has no code for 5xx; distribution sends this
}

// CutBlobAfter returns a Fault that simulates an upstream cut mid-blob: for
// the request that carries a blob's bytes ("GET blob", or "GET cdn" in hub
// mode, where "GET blob" is only a redirect) it sends the real headers,
// including the full Content-Length, then only the first n body bytes, and
// then aborts the connection. A client sees io.ErrUnexpectedEOF. Blobs of n
// bytes or fewer pass whole. The Fault works only when installed with
// SetFault.
func CutBlobAfter(n int64) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		next, ok := r.Context().Value(nextKey{}).(http.Handler)
		if !ok || !carriesBlob(r) {
			return false
		}
		next.ServeHTTP(&cutWriter{ResponseWriter: w, left: n}, r)
		return true
	}
}

// carriesBlob reports whether the answer to r is a blob's bytes.
func carriesBlob(r *http.Request) bool {
	switch Kind(r) {
	case "GET cdn":
		return true
	case "GET blob":
		return roleOf(r) != roleRegistry
	}
	return false
}

// cutWriter passes headers through and writes up to left body bytes. A
// write past that flushes what was allowed and panics with
// http.ErrAbortHandler, which makes net/http close the connection without
// logging (the model is httputil.ReverseProxy on a failed body copy).
type cutWriter struct {
	http.ResponseWriter
	left int64
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if int64(len(p)) <= c.left {
		n, err := c.ResponseWriter.Write(p)
		c.left -= int64(n)
		return n, err
	}
	c.ResponseWriter.Write(p[:c.left])
	c.left = 0
	http.NewResponseController(c.ResponseWriter).Flush()
	panic(http.ErrAbortHandler)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (c *cutWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
