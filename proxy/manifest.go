package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// maxManifestSize is the largest manifest regproxy caches. The OCI
// distribution spec asks registries to accept manifests of at least 4 MiB;
// larger ones pass through uncached.
const maxManifestSize = 4 << 20

// cachedManifest is a manifest body with the header that must go with it.
type cachedManifest struct {
	Body        []byte
	ContentType string
	Digest      digest.Digest
}

// serveManifest answers GET and HEAD of a manifest: by digest from the
// cache forever, by tag from the cache while fresh; either only to a
// client that access admits.
func (p *Proxy) serveManifest(w http.ResponseWriter, r *http.Request, rp regPath) error {
	if rp.IsTag() {
		return p.serveTag(w, r, rp)
	}
	m, err := p.manifests.load(r.Context(), rp.Digest)
	if err == nil {
		if ok, err := p.admit(w, r, rp); !ok {
			return err
		}
		setOutcome(r, outcomeHit)
		writeManifest(w, r, m.as(p.access.mediaType(clientOf(r, rp.Name), m.Digest)))
		return nil
	}
	p.logCacheError(err, rp)
	if r.Method == http.MethodHead {
		setOutcome(r, outcomePass)
		p.pass.ServeHTTP(w, r)
		return nil
	}
	return p.fetchManifest(w, r, rp, nil)
}

// serveTag answers a manifest by tag. A fresh record is served as it is to
// a client that access allows. Otherwise upstream is asked with a HEAD,
// which Docker Hub does not count against its pull limit, unless this is
// a GET with no record at all.
func (p *Proxy) serveTag(w http.ResponseWriter, r *http.Request, rp regPath) error {
	q, key := tagQueryAndKey(r, rp)
	rec, m, err := p.manifests.loadTag(r.Context(), key)
	if err != nil {
		p.logCacheError(err, rp)
		m = nil
	}
	c := clientIn(r, repoKey{q.registry, q.repo})
	if m != nil {
		p.access.learnRecord(c.repo, rec, m.Body)
		m = m.as(rec.MediaType)
	}
	switch {
	case m != nil && p.fresh(c, rec) && p.access.allows(c, ""):
		setOutcome(r, outcomeHit)
		writeManifest(w, r, m)
		return nil
	case m == nil && r.Method == http.MethodGet:
		p.learnOpenness(r, rp, c)
		return p.fetchManifest(w, r, rp, nil)
	}
	return p.revalidate(w, r, rp, q, m)
}

// learnOpenness asks upstream, as regproxy's probe, whether c's repository
// is open, when a client with credentials fetches a tag and regproxy does
// not know. Otherwise a client that GETs tags first (podman, skopeo,
// crane) would leave the repository's openness unknown, and a later
// outage would keep its cached copies even from clients of a public
// repository. One HEAD per repository per openTTL.
func (p *Proxy) learnOpenness(r *http.Request, rp regPath, c client) {
	if c.hasCred && !p.access.opennessKnown(c.repo) {
		p.checkUpstream(r, rp, c.anonymous(), p.probe)
	}
}

// fresh reports whether a tag record may be served without asking
// upstream: younger than its TTL (see tagTTL; never, for a TTL of zero),
// and not changed by a push through the proxy since it was validated.
func (p *Proxy) fresh(c client, rec tagRecord) bool {
	return p.now().Before(rec.Validated.Add(p.tagTTL(rec.Registry, rec.Repository, rec.Tag))) &&
		!p.access.invalidatedSince(c.repo, rec.Tag, rec.Validated)
}

func (p *Proxy) logCacheError(err error, rp regPath) {
	if !errors.Is(err, cachestore.ErrNotFound) {
		p.log.Warn("cache read failed; fetching upstream", "repo", rp.Name, "ref", rp.Reference, "err", err)
	}
}

// revalidate asks upstream with a HEAD (see verify) which digest a tag
// names now, and whether this client may have it. If the cache holds that
// manifest, the tag record is (re)written and the cached copy served: this
// is how clients that HEAD a tag and then GET by digest (dockerd,
// containerd) get tags from the cache too. If upstream is unreachable, 429
// or 5xx, the stale copy is served when there is one and the client had
// access before. Otherwise a GET goes upstream, and a HEAD gets upstream's
// answer, which the cache remembers (see headTags) until the GET by digest
// that follows it caches the manifest.
func (p *Proxy) revalidate(w http.ResponseWriter, r *http.Request, rp regPath, q tagQuery, stale *cachedManifest) error {
	c := clientOf(r, rp.Name)
	resp, err := p.verify(r, rp, c)
	if stale != nil && !p.access.allowsStale(c, "") {
		stale = nil
	}
	if stale != nil && (err != nil || unhealthy(resp.StatusCode)) {
		p.serveStale(w, r, rp, stale, resp, err)
		return nil
	}
	if err == nil && resp.StatusCode == http.StatusOK {
		announced := resp.Header.Get("Docker-Content-Digest")
		if m := p.cachedByDigest(r, announced); m != nil {
			m = m.as(manifestTypeOf(resp))
			p.saveTagRecord(r.Context(), q, m, p.now())
			setOutcome(r, outcomeRevalidated)
			writeManifest(w, r, m)
			return nil
		}
		if r.Method == http.MethodHead {
			p.manifests.heads.remember(q, announced, manifestTypeOf(resp), p.now())
		}
	}
	if r.Method == http.MethodGet {
		return p.fetchManifest(w, r, rp, stale)
	}
	if err != nil {
		return errUpstream(targetOf(r), err)
	}
	setOutcome(r, outcomePass)
	relayHead(w, resp)
	return nil
}

// manifestTypeOf returns resp's Content-Type if it is a manifest or index
// type, else "".
func manifestTypeOf(resp *http.Response) string {
	if ct := resp.Header.Get("Content-Type"); isManifestType(ct) {
		return ct
	}
	return ""
}

// as returns m served with media type mt, or m itself when mt is empty or
// already m's: the type one repository's upstream gave these bytes, which
// another repository's may not change.
func (m *cachedManifest) as(mt string) *cachedManifest {
	if mt == "" || mt == m.ContentType {
		return m
	}
	c := *m
	c.ContentType = mt
	return &c
}

// cachedByDigest returns the cached manifest with the digest upstream
// announced, or nil.
func (p *Proxy) cachedByDigest(r *http.Request, announced string) *cachedManifest {
	d, err := digest.Parse(announced)
	if err != nil {
		return nil
	}
	m, err := p.manifests.load(r.Context(), d)
	if err != nil {
		return nil
	}
	return m
}

// relayHead sends upstream's answer to a HEAD: status and headers.
func relayHead(w http.ResponseWriter, resp *http.Response) {
	copyHeader(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
}

// unhealthy reports upstream answers that a stale copy may stand in for.
func unhealthy(status int) bool {
	return status == http.StatusTooManyRequests || status >= 500
}

func (p *Proxy) serveStale(w http.ResponseWriter, r *http.Request, rp regPath, m *cachedManifest, resp *http.Response, err error) {
	why := fmt.Sprint(err)
	if err == nil {
		why = resp.Status
	}
	p.log.Warn("upstream failed; serving stale manifest", "host", targetOf(r), "repo", rp.Name, "ref", rp.Reference, "upstream", why)
	setOutcome(r, outcomeStale)
	writeManifest(w, r, m)
}

// fetchManifest GETs a manifest upstream, verifies it and caches it. stale,
// when not nil, is served instead if upstream fails.
func (p *Proxy) fetchManifest(w http.ResponseWriter, r *http.Request, rp regPath, stale *cachedManifest) error {
	target := targetOf(r)
	resp, err := p.fetch.Do(upstreamRequest(r.Context(), r, target, http.MethodGet))
	if err != nil {
		if stale != nil {
			p.serveStale(w, r, rp, stale, nil, err)
			return nil
		}
		return errUpstream(target, err)
	}
	defer resp.Body.Close()
	if stale != nil && unhealthy(resp.StatusCode) {
		p.serveStale(w, r, rp, stale, resp, nil)
		return nil
	}
	if servedBy(resp, target) {
		p.learnFrom(clientOf(r, rp.Name), rp, resp)
	}
	if resp.StatusCode != http.StatusOK {
		setOutcome(r, outcomePass)
		copyResponse(w, resp)
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return errUpstream(target, fmt.Errorf("read manifest: %w", err))
	}
	if len(body) > maxManifestSize {
		setOutcome(r, outcomePass)
		resp.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), resp.Body))
		copyResponse(w, resp)
		return nil
	}
	return p.cacheAndRelay(w, r, rp, resp, body)
}

// cacheAndRelay verifies a fetched manifest, caches it when it may be
// cached, and sends it to the client with upstream's headers.
func (p *Proxy) cacheAndRelay(w http.ResponseWriter, r *http.Request, rp regPath, resp *http.Response, body []byte) error {
	m := &cachedManifest{Body: body, ContentType: resp.Header.Get("Content-Type"), Digest: digest.FromBytes(body)}
	if rp.Digest != "" && m.Digest != rp.Digest {
		return &regError{Status: http.StatusBadGateway, Code: "MANIFEST_INVALID",
			Message: "upstream manifest does not match its digest", Cause: fmt.Errorf("got %s", m.Digest)}
	}
	if why := uncacheable(resp, m, targetOf(r)); why != "" {
		p.log.Info("manifest relayed, not cached", "host", targetOf(r), "repo", rp.Name, "ref", rp.Reference, "why", why)
		setOutcome(r, outcomePass)
		relayBody(w, resp, body)
		return nil
	}
	p.saveManifest(r, rp, m)
	relayManifest(w, r, resp, m)
	return nil
}

// uncacheable says why a manifest upstream sent may be relayed but not
// cached, or "" if it may be cached. What goes into the cache is served to
// every client that asks the target, so only a verified manifest that the
// target itself served qualifies.
func uncacheable(resp *http.Response, m *cachedManifest, target string) string {
	announced := resp.Header.Get("Docker-Content-Digest")
	switch {
	case isSchema1(m):
		return "schema 1 is signed per request"
	case announced != "" && announced != m.Digest.String():
		return "Docker-Content-Digest " + announced + " does not match the body, " + m.Digest.String()
	case !servedBy(resp, target):
		// Registries redirect blobs, rarely manifests: a manifest from
		// another host is that host's word, not the registry's.
		return "served through a redirect to " + resp.Request.URL.Host
	case !isManifestType(m.ContentType):
		return "media type " + strconv.Quote(m.ContentType) + " is not a manifest or index"
	}
	return ""
}

// servedBy reports whether resp came from target itself, not from a host
// a redirect led to.
func servedBy(resp *http.Response, target string) bool {
	return resp.Request == nil || sameHost(resp.Request.URL.Host, target)
}

// manifestTypes are the media types of the manifests and indexes that
// regproxy caches (OCI image spec; Docker image manifest v2, schema 2).
var manifestTypes = map[string]bool{
	"application/vnd.oci.image.manifest.v1+json":                true,
	"application/vnd.oci.image.index.v1+json":                   true,
	"application/vnd.docker.distribution.manifest.v2+json":      true,
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
}

func isManifestType(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && manifestTypes[mt]
}

func (p *Proxy) saveManifest(r *http.Request, rp regPath, m *cachedManifest) {
	c := clientOf(r, rp.Name)
	p.access.learnManifest(c.repo, m.Digest, manifestTypeOrEmpty(m.ContentType), m.Body)
	if err := p.manifests.save(r.Context(), m); err != nil {
		p.log.Warn("cache manifest", "digest", m.Digest, "err", err)
		return
	}
	if rp.IsTag() {
		p.saveTagRecord(r.Context(), tagQueryOf(r, rp), m, p.now())
		return
	}
	// The tags that HEADs found naming this manifest before it was cached.
	for _, h := range p.manifests.heads.take(c.repo, m.Digest, p.now()) {
		p.saveTagRecord(r.Context(), h.query, m.as(h.mediaType), h.at)
	}
}

func manifestTypeOrEmpty(ct string) string {
	if isManifestType(ct) {
		return ct
	}
	return ""
}

// saveTagRecord records that the tag q asked for names m, with m's media
// type, as upstream confirmed at validated.
func (p *Proxy) saveTagRecord(ctx context.Context, q tagQuery, m *cachedManifest, validated time.Time) {
	rec := tagRecord{Registry: q.registry, Repository: q.repo, Tag: q.tag, Accept: q.accept,
		Query: q.query, Digest: m.Digest, MediaType: m.ContentType, Validated: validated,
		Expires: validated.Add(p.tagTTL(q.registry, q.repo, q.tag)),
		Open:    p.access.isOpen(repoKey{q.registry, q.repo}, openTTL)}
	if err := p.manifests.saveTag(ctx, q.key(), rec); err != nil {
		p.log.Warn("cache tag record", "repo", q.repo, "tag", q.tag, "err", err)
	}
}

// relayBody sends an upstream response whose body was already read.
func relayBody(w http.ResponseWriter, resp *http.Response, body []byte) {
	copyHeader(w.Header(), resp.Header)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(resp.StatusCode)
	w.Write(body)
}

// relayManifest sends a manifest that upstream just served with 200, with
// upstream's headers, and answers the client's conditions and Range as a
// hit would (writeManifest). Upstream was asked for the whole manifest,
// without the client's If-None-Match (fetchHeaders), so a client that
// already holds this digest gets its 304 here (RFC 9110, section 13.1.2).
func relayManifest(w http.ResponseWriter, r *http.Request, resp *http.Response, m *cachedManifest) {
	copyHeader(w.Header(), resp.Header)
	w.Header().Set("Etag", `"`+m.Digest.String()+`"`)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(m.Body))
}

// writeManifest serves a cached manifest with the headers upstream sent.
//
// A response with its length set is complete when ServeContent returns, and
// is sent at once: its client should not wait for what runs after the
// handler (the access-log line, the metrics). Others (a 304, a 416 that
// http.Error wrote) are left to net/http, which frames them when the
// handler returns.
func writeManifest(w http.ResponseWriter, r *http.Request, m *cachedManifest) {
	h := w.Header()
	// What h.Set does, for keys already canonical, with one allocation for
	// the values; each slice is capped, so that an append to one cannot
	// write into the next.
	v := [...]string{m.ContentType, m.Digest.String(), `"` + m.Digest.String() + `"`, "registry/2.0",
		strconv.Itoa(len(m.Body))}
	values := v[:]
	h["Content-Type"] = values[0:1:1]
	h["Docker-Content-Digest"] = values[1:2:2]
	h["Etag"] = values[2:3:3]
	h["Docker-Distribution-Api-Version"] = values[3:4:4]
	if !conditional(r.Header) {
		// What ServeContent answers to a request without conditions or a
		// range, without its parsing of the headers that are not there.
		h["Accept-Ranges"] = acceptRangesBytes
		h["Content-Length"] = values[4:5:5]
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			w.Write(m.Body)
		}
		http.NewResponseController(w).Flush()
		return
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(m.Body))
	if h.Get("Content-Length") != "" {
		http.NewResponseController(w).Flush()
	}
}

// acceptRangesBytes is the Accept-Ranges header of every manifest
// response. (A handler does not modify header values once set.)
var acceptRangesBytes = []string{"bytes"}

// conditional reports whether h holds a header that ServeContent acts on
// besides the method: a range or a precondition.
func conditional(h http.Header) bool {
	for _, k := range [...]string{"Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"} {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

// isSchema1 recognises Docker image manifest schema 1, whose signed form
// differs per request and which may not be cached by digest.
func isSchema1(m *cachedManifest) bool {
	if strings.HasPrefix(m.ContentType, "application/vnd.docker.distribution.manifest.v1") {
		return true
	}
	var v struct {
		SchemaVersion int `json:"schemaVersion"`
	}
	return json.Unmarshal(m.Body, &v) == nil && v.SchemaVersion == 1
}

// tagQueryOf is what selects the tag record a request reads or writes.
func tagQueryOf(r *http.Request, rp regPath) tagQuery {
	registry, repo := canonicalRepo(targetOf(r), rp.Name)
	q := tagQuery{registry: registry, repo: repo, tag: rp.Reference, accept: normalizeAccept(r.Header)}
	if r.URL.RawQuery != "" { // most requests have none: no map to parse it into
		q.query = normalizeQuery(r.URL.Query())
	}
	return q
}
