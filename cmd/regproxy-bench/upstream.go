package main

import (
	"bytes"
	crand "crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The repositories and tag the bench asks the upstream for.
const (
	blobRepo     = "bench/blobs"
	manifestRepo = "bench/app"
	manifestTag  = "latest"
	manifestType = "application/vnd.oci.image.manifest.v1+json"
)

// upstream is the bench's registry: a TLS HTTP/1.1 server that serves
// generated blobs from files and one small OCI manifest, and counts the
// requests that reach it, which is the proof of caching.
type upstream struct {
	dir      string // where blob files live
	srv      *http.Server
	port     string // the listener's port; clients name upstreamHost:port
	manifest []byte
	mdigest  string // the manifest's digest

	mu    sync.Mutex       // guards blobs
	blobs map[string]*blob // by digest

	blobGets     atomic.Int64 // GETs of any blob
	manifestReqs atomic.Int64 // GETs and HEADs of the manifest

	// faults, when set, makes the upstream misbehave (the soak); nil
	// means it serves every request faithfully.
	faults atomic.Pointer[faults]
}

// blob is a generated blob kept in a file, so that neither the bench nor
// the upstream holds its bytes in memory.
type blob struct {
	digest string // sha256:<hex>
	size   int64
	path   string
	rate   int64        // bytes/s per response; 0 means unthrottled
	gets   atomic.Int64 // GETs of this blob that reached the upstream
	// lastSent is when the upstream last finished sending the blob's
	// bytes to a GET (Unix nanoseconds; 0 before the first), flushed to
	// the connection: the last upstream byte of a fill (scenario g).
	lastSent atomic.Int64
}

// startUpstream serves on 127.0.0.1 with the pki's certificate until close.
func startUpstream(dir string, p *pki) (*upstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	u := &upstream{dir: dir, port: port, blobs: map[string]*blob{}}
	u.manifest, u.mdigest = makeManifest()
	u.srv = &http.Server{
		Handler:           http.HandlerFunc(u.serveHTTP),
		TLSConfig:         serverTLS(p.server),
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // no HTTP/2
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go u.srv.ServeTLS(ln, "", "")
	return u, nil
}

// host is the name:port clients and regproxy use for the upstream.
func (u *upstream) host() string { return net.JoinHostPort(upstreamHost, u.port) }

// addr is where the upstream really listens.
func (u *upstream) addr() string { return net.JoinHostPort("127.0.0.1", u.port) }

func (u *upstream) close() { u.srv.Close() }

// closeIdle closes the upstream's idle keep-alive connections, so that
// regproxy's pooled connections to it go away too.
func (u *upstream) closeIdle() {
	u.srv.SetKeepAlivesEnabled(false) // closes the idle ones
	u.srv.SetKeepAlivesEnabled(true)
}

// serveHTTP routes /v2/ (the ping), blobs and manifests.
func (u *upstream) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		ociError(w, http.StatusMethodNotAllowed, "UNSUPPORTED")
		return
	}
	path := r.URL.Path
	var plan faultPlan
	if f := u.faults.Load(); f != nil {
		plan = f.plan(r.Method == http.MethodGet && strings.Contains(path, "/blobs/"))
		if !f.apply(w, r, plan) {
			return
		}
	}
	switch {
	case path == "/v2/":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "{}")
	case strings.Contains(path, "/blobs/"):
		u.serveBlob(w, r, path[strings.LastIndex(path, "/")+1:], plan)
	case strings.Contains(path, "/manifests/"):
		u.serveManifest(w, r, path[strings.LastIndex(path, "/")+1:])
	default:
		ociError(w, http.StatusNotFound, "NAME_UNKNOWN")
	}
}

// serveBlob answers GET and HEAD (and Range, for regproxy's resumes) of a
// blob from its file, throttled if the blob or the fault plan says so, and
// cut if the plan says so.
func (u *upstream) serveBlob(w http.ResponseWriter, r *http.Request, digest string, plan faultPlan) {
	u.mu.Lock()
	b := u.blobs[digest]
	u.mu.Unlock()
	if b == nil {
		ociError(w, http.StatusNotFound, "BLOB_UNKNOWN")
		return
	}
	if r.Method == http.MethodGet {
		b.gets.Add(1)
		u.blobGets.Add(1)
	}
	f, err := os.Open(b.path)
	if err != nil {
		ociError(w, http.StatusInternalServerError, "UNKNOWN")
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", b.digest)
	rate := b.rate
	if plan.rate > 0 && (rate == 0 || plan.rate < rate) {
		rate = plan.rate
	}
	if rate > 0 {
		w = newThrottledWriter(w, r, rate)
	}
	if plan.cutAt <= 0 {
		http.ServeContent(w, r, "", time.Time{}, f)
		if r.Method == http.MethodGet {
			http.NewResponseController(w).Flush()
			b.lastSent.Store(time.Now().UnixNano())
		}
		return
	}
	cw := &cutWriter{ResponseWriter: w, left: int64(plan.cutAt * float64(b.size))}
	http.ServeContent(cw, r, "", time.Time{}, f)
	if cw.cut {
		if f := u.faults.Load(); f != nil {
			f.cuts.Add(1)
		}
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // close the connection mid-body
	}
}

// serveManifest answers the one manifest, by tag or by digest.
func (u *upstream) serveManifest(w http.ResponseWriter, r *http.Request, ref string) {
	u.manifestReqs.Add(1)
	if ref != manifestTag && ref != u.mdigest {
		ociError(w, http.StatusNotFound, "MANIFEST_UNKNOWN")
		return
	}
	w.Header().Set("Content-Type", manifestType)
	w.Header().Set("Docker-Content-Digest", u.mdigest)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(u.manifest))
}

// ociError answers in the OCI distribution error format.
func ociError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`, code, strings.ToLower(code))
}

// makeManifest returns a small OCI image manifest and its digest.
func makeManifest() ([]byte, string) {
	type descriptor struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	fake := func(s string) string { return sha256Digest([]byte(s)) }
	m, _ := json.Marshal(struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Config        descriptor   `json:"config"`
		Layers        []descriptor `json:"layers"`
	}{2, manifestType,
		descriptor{"application/vnd.oci.image.config.v1+json", fake("config"), 1469},
		[]descriptor{{"application/vnd.oci.image.layer.v1.tar+gzip", fake("layer"), 3_370_706}},
	})
	return m, sha256Digest(m)
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// addBlob generates a blob of size random bytes into a file and serves it
// at rate bytes/s per response (0: unthrottled). Every blob is fresh: its
// digest has never been seen by regproxy.
func (u *upstream) addBlob(size, rate int64) (*blob, error) {
	f, err := os.CreateTemp(u.dir, "blob-*")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// ChaCha8 makes random bytes several times faster than crypto/rand;
	// they need to be unique, not secret.
	var seed [32]byte
	crand.Read(seed[:])
	src := rand.NewChaCha8(seed)
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(f, h), io.LimitReader(src, size), make([]byte, 1<<20)); err != nil {
		return nil, fmt.Errorf("generate blob: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	b := &blob{digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), size: size, path: f.Name(), rate: rate}
	u.mu.Lock()
	u.blobs[b.digest] = b
	u.mu.Unlock()
	return b, nil
}

// removeBlob deletes a blob's file once a scenario is done with it, so that
// the bench's disk use stays near one or two blobs.
func (u *upstream) removeBlob(b *blob) {
	u.mu.Lock()
	delete(u.blobs, b.digest)
	u.mu.Unlock()
	os.Remove(b.path)
}

// blobPath is the registry path of a blob.
func blobPath(b *blob) string { return "/v2/" + blobRepo + "/blobs/" + b.digest }

// tagPath is the registry path of the manifest by tag.
func tagPath() string { return "/v2/" + manifestRepo + "/manifests/" + manifestTag }

// throttleChunk is the most a throttled response writes at once, and
// throttleBurst the most it may send ahead of its rate.
const (
	throttleChunk = 16 << 10
	throttleBurst = 64 << 10
)

// throttledWriter limits a response body to a rate with a token bucket.
// Embedding the interface hides the ResponseWriter's ReadFrom, so every
// byte passes through Write.
type throttledWriter struct {
	http.ResponseWriter
	r      *http.Request // for its context: a gone client ends the wait
	rate   float64       // bytes per second
	tokens float64       // bytes that may be sent now; negative is debt
	last   time.Time     // when tokens was computed
}

func newThrottledWriter(w http.ResponseWriter, r *http.Request, rate int64) *throttledWriter {
	return &throttledWriter{ResponseWriter: w, r: r, rate: float64(rate), tokens: throttleChunk, last: time.Now()}
}

// Unwrap lets http.ResponseController reach the real writer (to flush
// before a cut).
func (t *throttledWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// Write sends p in chunks, each after the bucket holds enough tokens.
func (t *throttledWriter) Write(p []byte) (int, error) {
	var sent int
	for len(p) > 0 {
		n := min(len(p), throttleChunk)
		if err := t.wait(n); err != nil {
			return sent, err
		}
		m, err := t.ResponseWriter.Write(p[:n])
		sent += m
		if err != nil {
			return sent, err
		}
		p = p[n:]
	}
	return sent, nil
}

// wait takes n tokens, sleeping off any debt.
func (t *throttledWriter) wait(n int) error {
	now := time.Now()
	t.tokens = min(throttleBurst, t.tokens+now.Sub(t.last).Seconds()*t.rate) - float64(n)
	t.last = now
	if t.tokens >= 0 {
		return nil
	}
	timer := time.NewTimer(time.Duration(-t.tokens / t.rate * float64(time.Second)))
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-t.r.Context().Done():
		return t.r.Context().Err()
	}
}
