package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"time"
)

// The soak's client operations. Each is one request, whose body is
// checked byte by byte against the blob's file as it is read; a whole
// blob is also hashed against its digest, as containerd, skopeo and crane
// do. A wrong byte, or a body that ends early yet looks complete, is a
// hard failure of the bench; a request that fails is a counted error.

type opKind int

const (
	opHit    opKind = iota // GET a whole warm (cached) blob
	opMiss                 // GET a fresh blob: regproxy fills it
	opJoin                 // GET a fresh blob another client is pulling
	opRange                // GET a Range of a warm blob or of a fill in progress
	opTag                  // GET or HEAD the tag (a short TTL: revalidations), or GET the manifest by digest
	opCancel               // GET a blob and hang up partway
	numOps
)

var opNames = [numOps]string{
	"hit (whole warm blob)", "miss (whole fresh blob)", "join (fresh blob another client pulls)",
	"Range (warm blob or fill in progress)", "tag GET/HEAD (TTL 1s: revalidations) and manifest by digest",
	"cancelled partway (warm blob or fill in progress)",
}

// opWeights is the mix, in percent.
var opWeights = [numOps]int{35, 8, 12, 15, 20, 10}

// pickOp draws an operation from the mix.
func pickOp(rng *rand.Rand) opKind {
	n := rng.IntN(100)
	for k, w := range opWeights {
		if n < w {
			return opKind(k)
		}
		n -= w
	}
	return opHit
}

// opResult is the outcome of one operation.
type opResult struct {
	bytes     int64  // body bytes received and checked
	cause     string // why it failed; "" when it succeeded
	cancelled bool   // hung up on purpose
	wrong     int64  // bytes that differ from the blob's (hard failure)
	early     bool   // the body ended early without an error (hard failure)
}

// checker compares a body with bytes [off, off+n) of a blob's file and,
// when the body is the whole blob, hashes it against the digest.
type checker struct {
	file   *os.File
	off, n int64
	digest string    // "" unless the body is the whole blob
	h      hash.Hash // nil unless digest is set
	buf    []byte    // the file's bytes, for comparison
}

// soakBufSize is each soak client's read size: small, since 200 clients
// share the bench process.
const soakBufSize = 32 << 10

// readChecked reads body, checking it, until EOF, an error, or stop
// bytes (stop < 0: no limit). It returns the bytes read and how many of
// them differ from the file's.
func (c *checker) readChecked(body io.Reader, stop int64) (got, wrong int64, err error) {
	buf := make([]byte, soakBufSize)
	c.buf = make([]byte, soakBufSize)
	if c.digest != "" {
		c.h = sha256.New()
	}
	for stop < 0 || got < stop {
		n, rerr := body.Read(buf)
		if n > 0 {
			wrong += c.compare(buf[:n], got)
			got += int64(n)
		}
		if rerr == io.EOF {
			return got, wrong, nil
		}
		if rerr != nil {
			return got, wrong, rerr
		}
	}
	return got, wrong, nil
}

// compare checks p, found at offset at of the body, and returns the
// number of wrong bytes in it. Bytes past n are all wrong.
func (c *checker) compare(p []byte, at int64) int64 {
	if c.h != nil {
		c.h.Write(p)
	}
	in := max(0, min(int64(len(p)), c.n-at))
	wrong := int64(len(p)) - in
	want := c.buf[:in]
	if m, _ := c.file.ReadAt(want, c.off+at); int64(m) < in {
		return int64(len(p)) // the file is shorter than the blob: count it all
	}
	if !bytes.Equal(p[:in], want) {
		for i := range want {
			if p[i] != want[i] {
				wrong++
			}
		}
	}
	return wrong
}

// finish judges a body that ended cleanly after got bytes.
func (c *checker) finish(res *opResult, got int64) {
	if got < c.n {
		res.early = true
		return
	}
	if c.h != nil && "sha256:"+hex.EncodeToString(c.h.Sum(nil)) != c.digest && res.wrong == 0 {
		res.wrong = 1 // cannot happen when every byte matched the file
	}
}

// getBlob GETs bytes [first, last] of bl (the whole blob when rng is
// false), checks them, and hangs up after stop bytes when stop ≥ 0.
func getBlob(ctx context.Context, c *http.Client, url string, bl *blob, rng bool, first, last, stop int64) opResult {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return opResult{cause: "bad request"}
	}
	if rng {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, last))
	}
	resp, err := c.Do(req)
	if err != nil {
		return opResult{cause: requestCause(ctx, err)}
	}
	defer resp.Body.Close()
	chk := &checker{off: 0, n: bl.size, digest: bl.digest}
	switch {
	case rng && resp.StatusCode == http.StatusPartialContent:
		if want := fmt.Sprintf("bytes %d-%d/%d", first, last, bl.size); resp.Header.Get("Content-Range") != want {
			return opResult{cause: "wrong Content-Range", wrong: last - first + 1}
		}
		chk.off, chk.n, chk.digest = first, last-first+1, ""
	case resp.StatusCode == http.StatusOK: // a Range may be answered whole
	default:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return opResult{cause: fmt.Sprintf("status %d", resp.StatusCode)}
	}
	return readBlobBody(ctx, resp.Body, bl, chk, stop, cancel)
}

// readBlobBody reads and checks a blob body; see getBlob.
func readBlobBody(ctx context.Context, body io.Reader, bl *blob, chk *checker, stop int64, cancel func()) opResult {
	f, err := os.Open(bl.path)
	if err != nil {
		return opResult{cause: "bench: blob file gone"}
	}
	defer f.Close()
	chk.file = f
	got, wrong, err := chk.readChecked(body, stop)
	res := opResult{bytes: got, wrong: wrong}
	switch {
	case err != nil:
		res.cause = bodyCause(ctx, err)
	case stop >= 0 && got >= stop:
		cancel() // hang up partway, as a client that gives up does
		res.cancelled = true
	default:
		chk.finish(&res, got)
	}
	return res
}

// getManifest GETs or HEADs path and checks the manifest's digest, in
// the header and, for a GET, of the body.
func getManifest(ctx context.Context, c *http.Client, url, method string, want []byte, digest string) opResult {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return opResult{cause: "bad request"}
	}
	req.Header = acceptHeader()
	resp, err := c.Do(req)
	if err != nil {
		return opResult{cause: requestCause(ctx, err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	res := opResult{bytes: int64(len(body))}
	switch {
	case resp.StatusCode != http.StatusOK:
		res.cause = fmt.Sprintf("status %d", resp.StatusCode)
	case err != nil:
		res.cause = bodyCause(ctx, err)
	case resp.Header.Get("Docker-Content-Digest") != digest:
		res.cause = "wrong Docker-Content-Digest"
	case method == http.MethodGet && !bytes.Equal(body, want):
		res.wrong = int64(max(len(body), len(want)))
	case method == http.MethodHead && resp.ContentLength != int64(len(want)):
		res.cause = "wrong Content-Length on HEAD"
	}
	return res
}

// requestCause names why a request got no response.
func requestCause(ctx context.Context, err error) string {
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return "no response (CONNECT, TLS or connection closed)"
}

// bodyCause names why a body could not be read to its end.
func bodyCause(ctx context.Context, err error) string {
	if ctx.Err() != nil {
		return "timeout"
	}
	return "cut mid-body"
}

// opTimeout bounds one operation; the slowest (a slow, cut and resumed
// fill under full load) take seconds.
const opTimeout = time.Minute
