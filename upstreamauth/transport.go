package upstreamauth

import (
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// drainLimit bounds how much of a dropped response body is read so that its
// connection can be reused; past it, closing is cheaper than reading.
const drainLimit = 64 << 10

// basicTTL is how long Basic credentials that a registry accepted for a
// pull are sent up front on pulls of the same repository, before a fresh
// 401 is allowed to tell otherwise.
const basicTTL = time.Hour

// Options configures a Transport.
type Options struct {
	// Now tells the time for token expiry. Nil means time.Now.
	Now func() time.Time
	// Logger receives token fetches (debug) and their failures (warn),
	// never a credential or a token. Nil means slog.Default().
	Logger *slog.Logger
	// AnonymousTokens makes the Transport answer a Bearer challenge to a
	// pull on a host without configured credentials with a token fetched
	// without any, as an anonymous client would (Docker Hub hands those
	// out for public repositories). It is for regproxy's own probes of
	// what a repository shows to clients without credentials. False
	// leaves such requests untouched.
	AnonymousTokens bool
}

// Transport adds configured credentials to upstream pulls that carry none.
// mayUseConfigured says which requests those are: GET and HEAD of
// manifests, blobs and tag lists, and the "/v2/" ping. Every other request
// (a push, an upload, a delete, a token request), and any request that
// brings its own Authorization or goes to a host without credentials in
// the keyring, passes through untouched.
//
// For pulls, Transport speaks the registry token handshake
// (https://distribution.github.io/distribution/spec/auth/token/):
//
//  1. If an Authorization value cached for (host, "repository:NAME:pull"
//     of the path) is still fresh, send it; otherwise send the request as
//     it is.
//  2. On 401 with a Bearer challenge, GET the challenge's realm with
//     ?service=…&scope=… and Basic auth of the configured credentials, over
//     the same inner transport (checkRealm says which realms qualify). The
//     scope asked for is the challenge's, cut down to pull (pullScopes).
//  3. Cache the token under (host, pull scope of the path), where step 1
//     of the next pull looks, until a tenth of its life before it expires.
//     One fetch per key at a time, however many requests want it. The
//     cache holds at most maxTokens entries, whatever names clients make up.
//  4. Retry the request once with "Authorization: Bearer <token>".
//
// A Basic challenge is answered with a single retry in Basic auth instead;
// credentials that worked are cached like a token, under the same key, so
// they too are only ever sent up front on pulls of that repository.
// Only replayable requests are retried (no body, or GetBody set). Whenever
// the handshake fails the caller gets the registry's own 401, challenge and
// body included, never an error of ours in its place.
type Transport struct {
	inner http.RoundTripper
	keys  Keyring
	now   func() time.Time
	log   *slog.Logger
	// anonymous: see Options.AnonymousTokens.
	anonymous bool

	// mu guards inflight, and makes a cache miss and the start of its
	// fetch one step; it is never held during I/O.
	mu       sync.Mutex
	tokens   *lru.Cache[tokenKey, cached] // at most maxTokens entries
	inflight map[tokenKey]*flight         // as many as requests in flight
}

var _ http.RoundTripper = (*Transport)(nil)

// New returns a Transport that sends through inner (nil means
// http.DefaultTransport) and takes credentials from a copy of keys.
func New(inner http.RoundTripper, keys Keyring, opts Options) *Transport {
	if inner == nil {
		inner = http.DefaultTransport
	}
	tokens, _ := lru.New[tokenKey, cached](maxTokens) // errs only for a size <= 0
	t := &Transport{
		inner: inner, keys: Merge(nil, keys), now: opts.Now, log: opts.Logger, anonymous: opts.AnonymousTokens,
		tokens: tokens, inflight: map[tokenKey]*flight{},
	}
	if t.now == nil {
		t.now = time.Now
	}
	if t.log == nil {
		t.log = slog.Default()
	}
	return t
}

// RoundTrip implements http.RoundTripper. It never modifies req.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	// The one place where the policy is applied: what it refuses goes
	// upstream as the client sent it.
	if !mayUseConfigured(req) {
		return t.inner.RoundTrip(req)
	}
	host := strings.ToLower(req.URL.Host)
	if host == "" {
		host = strings.ToLower(req.Host)
	}
	creds, ok := t.keys.Lookup(host)
	if !ok && !t.anonymous {
		return t.inner.RoundTrip(req)
	}
	repo, _ := pullRepo(req.URL.Path)
	return t.authorized(req, tokenKey{host, repoScope(repo)}, creds)
}

// CloseIdleConnections closes the idle connections of the inner transport,
// if it has any.
func (t *Transport) CloseIdleConnections() {
	if c, ok := t.inner.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// authorized sends req, a pull (mayUseConfigured), with whatever
// credentials are cached for key and, on a 401 it can answer, once more
// with fresh ones. The Authorization values it adds only ever go to
// key.host, the host they were configured or issued for: the cache is
// keyed by it.
func (t *Transport) authorized(req *http.Request, key tokenKey, creds Credentials) (*http.Response, error) {
	sent := t.cached(key)
	resp, err := t.inner.RoundTrip(withAuth(req, sent))
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	if sent != "" {
		t.forget(key, sent) // refused: revoked, expired early, or too narrow
	}
	if !replayable(req) {
		return resp, nil
	}
	auth, ok := t.answer(req, resp, key, sent, creds)
	if !ok {
		return resp, nil
	}
	retry, err := rewind(req, auth)
	if err != nil {
		t.log.Warn("upstream auth: cannot replay request body", "host", key.host, "err", err)
		return resp, nil
	}
	drain(resp)
	resp, err = t.inner.RoundTrip(retry)
	if err == nil {
		t.settle(key, auth, resp.StatusCode != http.StatusUnauthorized)
	}
	return resp, err
}

// settle records how the retry with auth went: Basic credentials that
// worked are sent up front on later pulls under key (never on a host's
// other requests: the key names a pull scope); a fresh token that was
// refused all the same is not sent again.
func (t *Transport) settle(key tokenKey, auth string, worked bool) {
	switch {
	case worked && strings.HasPrefix(auth, "Basic "):
		t.put(key, auth, t.now().Add(basicTTL))
	case !worked:
		t.forget(key, auth)
	}
}

// answer returns the Authorization value with which to retry a request that
// got resp, a 401, or false if there is none worth a retry.
func (t *Transport) answer(req *http.Request, resp *http.Response, key tokenKey, sent string, creds Credentials) (string, bool) {
	ch, ok := pickChallenge(parseChallenges(resp.Header.Values("WWW-Authenticate")))
	if !ok {
		return "", false
	}
	if ch.scheme == "basic" {
		// The very credentials we have were just refused, or there are
		// none to offer: no point.
		return basicAuth(creds), !creds.none() && !strings.HasPrefix(sent, "Basic ")
	}
	auth, err := t.token(req.Context(), key, ch, creds)
	return auth, err == nil // fill logged the failure, once for all waiters
}

// cached returns the fresh Authorization value for key, or "".
func (t *Transport) cached(key tokenKey) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.freshLocked(key)
}

// withAuth returns req, or a copy of it with Authorization set to auth.
func withAuth(req *http.Request, auth string) *http.Request {
	if auth == "" {
		return req
	}
	out := req.Clone(req.Context())
	out.Header.Set("Authorization", auth)
	return out
}

// replayable reports whether req can be sent a second time: a consumed
// body can only be had again through GetBody.
func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// rewind returns a copy of req, with a fresh body and Authorization auth.
func rewind(req *http.Request, auth string) (*http.Request, error) {
	out := withAuth(req, auth)
	if req.Body != nil && req.Body != http.NoBody {
		body, err := req.GetBody()
		if err != nil {
			return nil, err
		}
		out.Body = body
	}
	return out, nil
}

func basicAuth(c Credentials) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(c.Username+":"+c.Password))
}

// drain reads a little of a response we drop, so its connection can be
// reused, and closes it.
func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, drainLimit)
	_ = resp.Body.Close()
}
