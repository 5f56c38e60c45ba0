package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
)

// The cache is shared by digest across repositories, registries and
// clients; access decides who may be served what from it. The rule:
// regproxy serves from its cache exactly what upstream would serve this
// client.
//
//   - An object (blob or manifest by digest) is served under a repository
//     only once upstream has shown that the repository holds it: regproxy
//     fetched it through that repository, found it named by a manifest it
//     fetched there, or a HEAD there answered 200. Membership does not
//     depend on the client.
//   - A repository is open when a request without the client's own
//     Authorization was answered 200: anonymously, or with the configured
//     credentials, whose purpose is to open what they read to every client
//     of the proxy. What is open is served to everyone.
//   - Any other repository is served only to a client whose own
//     Authorization upstream accepted for it recently (a grant), keyed by a
//     hash of that header, the registry and the repository.
//   - When upstream cannot be asked (unreachable, 429, 5xx), a cached copy
//     is served only where the repository was open, or the client had a
//     grant, before upstream became unavailable.
//
// Everything it remembers is in bounded LRUs, since repository names and
// credentials are the clients' choice; forgetting costs one HEAD upstream.
type access struct {
	now func() time.Time

	repos   *lru.Cache[repoKey, openness]   // what regproxy learnt of each repository's openness
	grants  *lru.Cache[[16]byte, time.Time] // hash(credential, repository) → when upstream last accepted it
	members *lru.Cache[[16]byte, string]    // hash(repository, digest) → media type upstream gave ("" for blobs)

	mu          sync.Mutex                      // protects invalidated's check-and-set
	invalidated *lru.Cache[[16]byte, time.Time] // hash(repository, tag or "") → when a push changed it
}

const (
	// openTTL is how long a repository found open is served without asking
	// again: a repository made private stays served that long.
	openTTL = 15 * time.Minute
	// grantTTL is how long a client's proven access to a repository
	// stands: a revoked credential keeps reading the cache that long.
	grantTTL = 5 * time.Minute

	maxRepos         = 16 << 10
	maxGrants        = 64 << 10
	maxMembers       = 256 << 10
	maxInvalidations = 4 << 10
)

// repoKey names a repository canonically (see canonicalRepo).
type repoKey struct{ registry, repo string }

// openness is what a request without client credentials last showed.
type openness struct {
	open    bool
	checked time.Time
}

// client is who asks for what, for access decisions.
type client struct {
	repo repoKey
	// cred is a hash of the Authorization header and the repository; zero
	// when the client sent none.
	cred    [16]byte
	hasCred bool
}

func newAccess(now func() time.Time) *access {
	repos, _ := lru.New[repoKey, openness](maxRepos)
	grants, _ := lru.New[[16]byte, time.Time](maxGrants)
	members, _ := lru.New[[16]byte, string](maxMembers)
	invalidated, _ := lru.New[[16]byte, time.Time](maxInvalidations)
	return &access{now: now, repos: repos, grants: grants, members: members, invalidated: invalidated}
}

// clientOf identifies the client of an intercepted request for repository
// name.
func clientOf(r *http.Request, name string) client {
	registry, repo := canonicalRepo(targetOf(r), name)
	return clientIn(r, repoKey{registry, repo})
}

// clientIn identifies the client of an intercepted request for the
// repository rk names. The credential is hashed with the repository, so
// the tables hold no secret and a grant names one repository.
func clientIn(r *http.Request, rk repoKey) client {
	c := client{repo: rk}
	if auth := r.Header.Get("Authorization"); auth != "" {
		c.cred, c.hasCred = credOf(r, auth, rk), true
	}
	return c
}

// anonymous is c without its credentials: how regproxy's own probes ask.
func (c client) anonymous() client { return client{repo: c.repo} }

// credCache remembers the last credential hash worked out on one
// intercepted connection. A client sends the same Authorization with every
// request of a connection, and hashing a token of a kilobyte or more on
// every hit would cost more than the rest of the access check. It holds
// the header only as long as the connection that sent it.
type credCache struct {
	mu   sync.Mutex // guards the rest
	auth string
	repo repoKey
	cred [16]byte
}

type credCacheKey struct{}

// withCredCache gives the requests of one connection a credCache.
func withCredCache(ctx context.Context) context.Context {
	return context.WithValue(ctx, credCacheKey{}, new(credCache))
}

// credOf is hash16(auth, rk.registry, rk.repo), from the connection's
// credCache when it has it.
func credOf(r *http.Request, auth string, rk repoKey) [16]byte {
	cc, ok := r.Context().Value(credCacheKey{}).(*credCache)
	if !ok {
		return hash16(auth, rk.registry, rk.repo)
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.auth != auth || cc.repo != rk {
		cc.auth, cc.repo, cc.cred = auth, rk, hash16(auth, rk.registry, rk.repo)
	}
	return cc.cred
}

// hash16 is the first 16 bytes of the SHA-256 of parts, each followed by a
// zero byte. Short inputs are hashed from the stack: this runs several
// times on every hit.
func hash16(parts ...string) [16]byte {
	var stack [256]byte
	b := stack[:0]
	for _, p := range parts {
		b = append(append(b, p...), 0)
	}
	sum := sha256.Sum256(b)
	return [16]byte(sum[:16])
}

func memberKey(rk repoKey, d digest.Digest) [16]byte {
	return hash16(rk.registry, rk.repo, d.String())
}

// allows reports whether c may be served d (or, for d == "", the tag it
// asked for) from the cache without asking upstream.
func (a *access) allows(c client, d digest.Digest) bool {
	if d != "" && !a.members.Contains(memberKey(c.repo, d)) {
		return false
	}
	return a.isOpen(c.repo, openTTL) || a.granted(c, grantTTL)
}

// allowsStale reports whether c may be served a cached d (or tag) while
// upstream cannot be asked: only if the repository was open, or the client
// proved access, before that.
func (a *access) allowsStale(c client, d digest.Digest) bool {
	if d != "" && !a.members.Contains(memberKey(c.repo, d)) {
		return false
	}
	return a.isOpen(c.repo, -1) || a.granted(c, -1)
}

// opennessKnown reports whether the repository's openness was checked
// within openTTL.
func (a *access) opennessKnown(rk repoKey) bool {
	o, ok := a.repos.Peek(rk)
	return ok && a.now().Sub(o.checked) < openTTL
}

// isOpen reports whether rk was found open within ttl; a negative ttl
// means ever, as far as regproxy remembers.
func (a *access) isOpen(rk repoKey, ttl time.Duration) bool {
	o, ok := a.repos.Get(rk)
	return ok && o.open && (ttl < 0 || a.now().Sub(o.checked) < ttl)
}

func (a *access) granted(c client, ttl time.Duration) bool {
	if !c.hasCred {
		return false
	}
	at, ok := a.grants.Get(c.cred)
	return ok && (ttl < 0 || a.now().Sub(at) < ttl)
}

// mediaType returns the media type upstream gave d in c's repository, or
// "" if it gave none that regproxy remembers.
func (a *access) mediaType(c client, d digest.Digest) string {
	mt, _ := a.members.Get(memberKey(c.repo, d))
	return mt
}

// learn records what upstream's status for c's request about d (a digest,
// or the digest a tag named; "" if none) tells: a 200 means the
// repository holds d and the client may read it; a 401 or 403 withdraws
// the client's grant. A refusal of a client without credentials says
// nothing about the repository (Docker Hub refuses every request without
// a token, public repositories included): only regproxy's own probe,
// which fetches an anonymous token, finds a repository closed (see
// closed).
func (a *access) learn(c client, status int, d digest.Digest, mediaType string) {
	switch status {
	case http.StatusOK:
		if d != "" {
			a.addMember(c.repo, d, mediaType)
		}
		if c.hasCred {
			a.grants.Add(c.cred, a.now())
		} else {
			a.repos.Add(c.repo, openness{open: true, checked: a.now()})
		}
	case http.StatusUnauthorized, http.StatusForbidden:
		if c.hasCred {
			a.grants.Remove(c.cred)
		}
	}
}

// closed records that regproxy's probe, asking as a client without
// credentials would after the anonymous token exchange, was refused.
func (a *access) closed(rk repoKey) {
	a.repos.Add(rk, openness{open: false, checked: a.now()})
}

// addMember records that rk holds d. A media type already recorded for
// this repository is kept unless a new one is given: what one repository
// said of some bytes never changes what another one's clients get.
func (a *access) addMember(rk repoKey, d digest.Digest, mediaType string) {
	k := memberKey(rk, d)
	if mediaType == "" {
		if _, ok := a.members.Get(k); ok {
			return
		}
	}
	a.members.Add(k, mediaType)
}

// forgetMember records that rk no longer holds d (a DELETE went through).
func (a *access) forgetMember(rk repoKey, d digest.Digest) {
	a.members.Remove(memberKey(rk, d))
}

// learnManifest records d, a manifest upstream served from rk, and every
// object it names: a registry accepts a manifest only when the repository
// holds what it references (distribution spec, "Pushing Manifests").
func (a *access) learnManifest(rk repoKey, d digest.Digest, mediaType string, body []byte) {
	a.addMember(rk, d, mediaType)
	for _, ref := range references(body) {
		a.addMember(rk, ref.Digest, ref.manifestType())
	}
}

// learnRecord takes what a tag record says, where regproxy knows nothing
// newer: the repository held the manifest and what it names, and was open
// or not, when the record was validated. A record is upstream's word, as
// good after a restart as before it.
func (a *access) learnRecord(rk repoKey, rec tagRecord, body []byte) {
	if !a.members.Contains(memberKey(rk, rec.Digest)) {
		a.learnManifest(rk, rec.Digest, rec.MediaType, body)
	}
	if o, ok := a.repos.Peek(rk); rec.Open && (!ok || o.checked.Before(rec.Validated)) {
		a.repos.Add(rk, openness{open: true, checked: rec.Validated})
	}
}

// invalidate records that a push or delete through the proxy changed tag
// in rk ("" for every tag of rk), so that tag records validated before now
// are revalidated.
func (a *access) invalidate(rk repoKey, tag string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.invalidated.Add(hash16(rk.registry, rk.repo, tag), a.now())
}

// invalidatedSince reports whether tag in rk changed through the proxy
// after validated.
func (a *access) invalidatedSince(rk repoKey, tag string, validated time.Time) bool {
	if a.invalidated.Len() == 0 {
		return false // nothing was pushed through the proxy: no keys to hash
	}
	for _, t := range []string{tag, ""} {
		if at, ok := a.invalidated.Get(hash16(rk.registry, rk.repo, t)); ok && !at.Before(validated) {
			return true
		}
	}
	return false
}

// descriptor is the part of an OCI descriptor that access needs.
type descriptor struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
}

// manifestType is the descriptor's media type if it names a manifest or
// an index, else "" (blobs are served as application/octet-stream).
func (d descriptor) manifestType() string {
	if isManifestType(d.MediaType) {
		return d.MediaType
	}
	return ""
}

// references lists the valid sha256 descriptors a manifest or index names:
// its config, layers, blobs (artifact manifests) and child manifests.
func references(body []byte) []descriptor {
	var m struct {
		Config    *descriptor  `json:"config"`
		Layers    []descriptor `json:"layers"`
		Blobs     []descriptor `json:"blobs"`
		Manifests []descriptor `json:"manifests"`
	}
	if json.Unmarshal(body, &m) != nil {
		return nil
	}
	all := append(append(m.Layers, m.Blobs...), m.Manifests...)
	if m.Config != nil {
		all = append(all, *m.Config)
	}
	out := all[:0]
	for _, d := range all {
		if d.Digest.Validate() == nil && d.Digest.Algorithm() == digest.SHA256 {
			out = append(out, d)
		}
	}
	return out
}
