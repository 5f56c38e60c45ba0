package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/fill"
)

// maxJoinAttempts bounds how often a request re-joins after the fills it
// waited on were abandoned (their leaders got an error status upstream).
const maxJoinAttempts = 3

// maxErrorBody bounds the upstream error body relayed for a blob request.
const maxErrorBody = 64 << 10

// serveBlob answers GET and HEAD of a blob: from the store on a hit, else
// by joining (or starting) the one fill for that digest. Whatever comes
// from the cache or from another client's fill passes the gate first.
func (p *Proxy) serveBlob(w http.ResponseWriter, r *http.Request, rp regPath) error {
	g := &gate{p: p, rp: rp}
	if r.Method == http.MethodHead {
		if handled, err := p.serveBlobHit(w, r, g); handled {
			return err
		}
		return p.headBlobMiss(w, r, g)
	}
	return p.fillBlob(w, r, g)
}

// gate admits a request (see admit) at most once, the first time it is
// about to be answered from the cache or from a fill it did not start.
type gate struct {
	p      *Proxy
	rp     regPath
	passed bool
}

// pass reports whether the request may go on; if not, it has been answered.
func (g *gate) pass(w http.ResponseWriter, r *http.Request) (bool, error) {
	if g.passed {
		return true, nil
	}
	ok, err := g.p.admit(w, r, g.rp)
	g.passed = ok
	return ok, err
}

// serveBlobHit serves a committed blob straight from its file: Range,
// HEAD and conditional requests come from http.ServeContent. It reports
// whether it answered the request, with the blob or with the gate's
// refusal.
func (p *Proxy) serveBlobHit(w http.ResponseWriter, r *http.Request, g *gate) (bool, error) {
	d := g.rp.Digest
	f, err := p.store.Open(r.Context(), cachestore.BlobKey(d))
	if err != nil {
		if !errors.Is(err, cachestore.ErrNotFound) {
			p.log.Warn("cache read failed; fetching upstream", "digest", d, "err", err)
		}
		return false, nil
	}
	defer f.Close()
	if ok, err := g.pass(w, r); !ok {
		return true, err
	}
	setOutcome(r, outcomeHit)
	setBlobHeaders(w.Header(), d)
	http.ServeContent(w, r, "", time.Time{}, f)
	return true, nil
}

// setBlobHeaders sets what a registry sends with a blob, so that a hit
// looks to the client like the upstream response it replaces.
func setBlobHeaders(h http.Header, d digest.Digest) {
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
}

// headBlobMiss answers a HEAD from a fill in progress, which already
// knows the size, else passes it upstream.
func (p *Proxy) headBlobMiss(w http.ResponseWriter, r *http.Request, g *gate) error {
	if f := p.fills.Lookup(g.rp.Digest); f != nil && f.Wait(r.Context()) == nil && f.Size() >= 0 {
		if ok, err := g.pass(w, r); !ok {
			return err
		}
		setOutcome(r, outcomeJoin)
		setBlobHeaders(w.Header(), g.rp.Digest)
		w.Header().Set("Content-Length", fmt.Sprint(f.Size()))
		w.Header().Set("Accept-Ranges", "bytes")
		w.WriteHeader(http.StatusOK)
		return nil
	}
	setOutcome(r, outcomePass)
	p.pass.ServeHTTP(w, r)
	return nil
}

// fillBlob serves a blob miss from the fill for its digest, starting the
// fill if there is none. The leader's own upstream request is its check;
// a request that joins another's fill passes the gate first.
func (p *Proxy) fillBlob(w http.ResponseWriter, r *http.Request, g *gate) error {
	for range maxJoinAttempts {
		if handled, err := p.serveBlobHit(w, r, g); handled {
			return err
		}
		f, leader, err := p.fills.Join(r.Context(), g.rp.Digest)
		if err != nil {
			return errUpstream(targetOf(r), err)
		}
		if leader {
			if handled, err := p.startFill(w, r, g.rp, f); handled {
				return err
			}
		} else if ok, err := g.pass(w, r); !ok {
			return err
		}
		rd, err := f.NewReader(r.Context())
		if errors.Is(err, fill.ErrAbandoned) || errors.Is(err, fill.ErrFinished) {
			continue // look in the store again, or start afresh
		}
		if err != nil {
			return nil // the client went away while waiting
		}
		if !leader {
			setOutcome(r, outcomeJoin)
		}
		streamFill(w, r, f, rd)
		return nil
	}
	return errUpstream(targetOf(r), errors.New("every fill for this blob was abandoned"))
}

// startFill makes the leader's upstream request under the fill's own
// context. A 200 starts the fill; anything else is relayed to this client
// (a 401 with its challenge, a 404) and the fill is abandoned, so that
// waiting requests ask upstream with their own credentials.
func (p *Proxy) startFill(w http.ResponseWriter, r *http.Request, rp regPath, f *fill.Fill) (handled bool, err error) {
	target := targetOf(r)
	resp, err := p.fetch.Do(upstreamRequest(f.Context(), r, target, http.MethodGet))
	if err != nil {
		f.Abandon()
		return true, errUpstream(target, err)
	}
	p.learnFrom(clientOf(r, rp.Name), rp, resp)
	if resp.StatusCode != http.StatusOK {
		// Read the (small) error body before Abandon ends the fill's
		// context, under which it arrives.
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		f.Abandon()
		setOutcome(r, outcomePass)
		relayBody(w, resp, body)
		return true, nil
	}
	body := fill.Body{Reader: resp.Body, Size: resp.ContentLength}
	if body.Size > 0 {
		body.Resume = p.resumer(r, target, body.Size)
	}
	f.Start(body)
	return false, nil
}

// resumer reopens a cut blob download at an offset with a Range request,
// through the same redirects. It keeps its own copy of the request, since
// the fill outlives r. The range names both ends: some registries refuse
// open-ended ranges.
func (p *Proxy) resumer(r *http.Request, target string, size int64) func(context.Context, int64) (io.ReadCloser, error) {
	base := upstreamRequest(context.Background(), r, target, http.MethodGet)
	return func(ctx context.Context, off int64) (io.ReadCloser, error) {
		req := base.Clone(ctx)
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, size-1))
		resp, err := p.fetch.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusPartialContent ||
			!strings.HasPrefix(resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-", off)) {
			resp.Body.Close()
			return nil, fmt.Errorf("upstream answered a resume at byte %d with %s", off, resp.Status)
		}
		return resp.Body, nil
	}
}

// streamFill sends a fill to the client while it grows. If the fill fails
// the connection is cut, so that the client retries rather than keeping
// bytes that no digest vouched for.
func streamFill(w http.ResponseWriter, r *http.Request, f *fill.Fill, rd *fill.Reader) {
	defer rd.Close()
	setBlobHeaders(w.Header(), f.Digest())
	tr := &trackingReader{Reader: rd}
	if f.Size() >= 0 {
		http.ServeContent(w, r, "", time.Time{}, tr)
	} else {
		w.WriteHeader(http.StatusOK)
		io.Copy(w, tr)
	}
	if tr.err != nil {
		panic(http.ErrAbortHandler)
	}
}

// trackingReader remembers the first read error, which http.ServeContent
// would otherwise swallow.
type trackingReader struct {
	*fill.Reader
	err error
}

func (t *trackingReader) Read(p []byte) (int, error) {
	n, err := t.Reader.Read(p)
	if err != nil && err != io.EOF && t.err == nil {
		t.err = err
	}
	return n, err
}
