package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/regproxy/regproxy/fill"
)

// maxErrorBody bounds the upstream error body relayed for a blob request.
const maxErrorBody = 64 << 10

// serveBlob answers GET and HEAD of a blob: from the store on a hit, else
// from the one fill for that digest, which a GET starts if there is none.
// A HEAD never starts a fill: without one to join, it goes upstream.
//
// What comes from the cache, or from a fill another request started, is
// served only once admit has let the client have it. A fill the client's
// own request started needs no check: upstream's 200 to that request is the
// proof.
func (p *Proxy) serveBlob(w http.ResponseWriter, r *http.Request, rp regPath) error {
	var fetch fill.Fetch
	if r.Method == http.MethodGet {
		fetch = p.blobFetch(r, rp)
	}
	b, err := p.fills.Do(r.Context(), rp.Digest, fetch)
	var refused *fill.Refused
	switch {
	case errors.As(err, &refused):
		setOutcome(r, outcomePass)
		relayBody(w, &http.Response{StatusCode: refused.Status, Header: refused.Header}, refused.Body)
		return nil
	case errors.Is(err, fill.ErrNoFill):
		setOutcome(r, outcomePass)
		p.pass.ServeHTTP(w, r)
		return nil
	case err != nil && r.Context().Err() != nil:
		return nil // the client went away while waiting
	case err != nil:
		return errUpstream(targetOf(r), err)
	}
	defer b.Close()
	if r.Method == http.MethodHead && b.Size < 0 {
		setOutcome(r, outcomePass) // a fill of unknown size cannot say it
		p.pass.ServeHTTP(w, r)
		return nil
	}
	if b.Source != fill.Led {
		if ok, err := p.admit(w, r, rp); !ok {
			return err
		}
	}
	setOutcome(r, blobOutcomes[b.Source])
	// X-Cache tells a client (regproxy warm) where the bytes came from, in
	// the access log's words. It tells the client nothing that admit has
	// not let it know: it may have the blob, and a hit shows in the timing.
	w.Header().Set("X-Cache", blobOutcomes[b.Source])
	sendBlob(w, r, rp, b)
	return nil
}

// blobOutcomes is the access log's word for where a blob came from.
var blobOutcomes = map[fill.Source]string{fill.Hit: outcomeHit, fill.Led: outcomeMiss, fill.Joined: outcomeJoin}

// setBlobHeaders sets what a registry sends with a blob, so that a hit
// looks to the client like the upstream response it replaces.
func setBlobHeaders(h http.Header, rp regPath) {
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", rp.Digest.String())
	h.Set("Etag", `"`+rp.Digest.String()+`"`)
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
}

// sendBlob serves b: Range, HEAD and conditional requests come from
// http.ServeContent. If reading fails (the fill fails, or its relay cuts
// this slow client) the connection is cut, so that the client retries
// rather than keeping bytes that no digest vouched for.
func sendBlob(w http.ResponseWriter, r *http.Request, rp regPath, b *fill.Blob) {
	setBlobHeaders(w.Header(), rp)
	tr := &trackingReader{ReadSeeker: b}
	if b.Size >= 0 {
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
	io.ReadSeeker
	err error
}

func (t *trackingReader) Read(p []byte) (int, error) {
	n, err := t.ReadSeeker.Read(p)
	if err != nil && err != io.EOF && t.err == nil {
		t.err = err
	}
	return n, err
}

// blobFetch is how a fill started by r fetches the blob: a GET of the whole
// blob as r asks for it (r's credentials, and upstream's answer is r's),
// then, to resume a cut, a GET of the rest with a Range. It keeps its own
// copy of the request, since the fill outlives r.
func (p *Proxy) blobFetch(r *http.Request, rp regPath) fill.Fetch {
	base := upstreamRequest(context.Background(), r, targetOf(r), http.MethodGet)
	c := clientOf(r, rp.Name)
	size := int64(-1) // the size the first answer announced; fetches run one at a time
	return func(ctx context.Context, off int64) (fill.Body, error) {
		if off > 0 {
			return p.fetchRest(ctx, base, off, size)
		}
		body, err := p.fetchWhole(ctx, base, c, rp)
		size = body.Size
		return body, err
	}
}

// fetchWhole sends the first GET of a fill. Any answer but a 200 is r's
// own, and goes back to it as a *fill.Refused.
func (p *Proxy) fetchWhole(ctx context.Context, base *http.Request, c client, rp regPath) (fill.Body, error) {
	resp, err := p.fetch.Do(base.Clone(ctx))
	if err != nil {
		return fill.Body{Size: -1}, err
	}
	p.learnFrom(c, rp, resp)
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		return fill.Body{Size: -1}, &fill.Refused{Status: resp.StatusCode, Header: resp.Header, Body: body}
	}
	return fill.Body{ReadCloser: resp.Body, Size: resp.ContentLength}, nil
}

// fetchRest reopens a cut blob download at off with a Range request,
// through the same redirects. The range names both ends: some registries
// refuse open-ended ranges.
//
// The client's token may have expired since the fill began (Docker Hub's
// last five minutes; a large layer can take longer). When upstream refuses
// it with a 401, the rest is fetched as regproxy's own probes ask: without
// the client's credentials, with an anonymous token or the configured
// credentials. The client has already been let have this blob; the fill
// only needs its bytes.
func (p *Proxy) fetchRest(ctx context.Context, base *http.Request, off, size int64) (fill.Body, error) {
	req := base.Clone(ctx)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, size-1))
	resp, err := p.fetch.Do(req)
	if err == nil && resp.StatusCode == http.StatusUnauthorized && req.Header.Get("Authorization") != "" {
		resp.Body.Close()
		req = req.Clone(ctx)
		req.Header.Del("Authorization")
		resp, err = newFetchClient(p.probe).Do(req)
	}
	if err != nil {
		return fill.Body{}, err
	}
	start, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
	if resp.StatusCode != http.StatusPartialContent || !ok || start != off || total != size {
		resp.Body.Close()
		return fill.Body{}, fmt.Errorf("upstream answered a resume at byte %d with %s, Content-Range %q",
			off, resp.Status, resp.Header.Get("Content-Range"))
	}
	// The part may end before the blob does: the fill then resumes again.
	return fill.Body{ReadCloser: resp.Body, Size: total}, nil
}

// contentRangeRE is a satisfied byte range, RFC 9110, section 14.4.
var contentRangeRE = regexp.MustCompile(`^bytes ([0-9]+)-([0-9]+)/([0-9]+)$`)

// parseContentRange returns the first byte and the complete length a 206's
// Content-Range names.
func parseContentRange(s string) (start, total int64, ok bool) {
	m := contentRangeRE.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(m[1], 10, 64)
	last, err2 := strconv.ParseInt(m[2], 10, 64)
	total, err3 := strconv.ParseInt(m[3], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || start > last || last >= total {
		return 0, 0, false
	}
	return start, total, true
}
