package upstreamauth

import (
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// drainLimit bounds how much of a dropped response body is read so that its
// connection can be reused; past it, closing is cheaper than reading.
const drainLimit = 64 << 10

// basicTTL is how long a host that answered Basic credentials is sent them
// up front, before a fresh 401 is allowed to tell otherwise.
const basicTTL = time.Hour

// basicScope is the scope slot under which a host's Basic credentials are
// remembered. Scopes never begin with a space.
const basicScope = " basic"

// Options configures a Transport.
type Options struct {
	// Now tells the time for token expiry. Nil means time.Now.
	Now func() time.Time
	// Logger receives token fetches (debug) and their failures (warn),
	// never a credential or a token. Nil means slog.Default().
	Logger *slog.Logger
}

// Transport adds configured credentials to upstream requests that carry
// none. A request that brings its own Authorization, or goes to a host
// without credentials in the keyring, passes through untouched.
//
// For the others, Transport speaks the registry token handshake
// (https://distribution.github.io/distribution/spec/auth/token/):
//
//  1. If a token cached for (host, scope guessed from the path) is still
//     fresh, send it (or the Basic credentials the host accepted before);
//     otherwise send the request as it is.
//  2. On 401 with a Bearer challenge, GET the challenge's realm with
//     ?service=…&scope=… and Basic auth of the configured credentials, over
//     the same inner transport (checkRealm says which realms qualify).
//  3. Cache the token under (host, guessed scope), where step 1 of the
//     next request looks, until a tenth of its life before it expires. One
//     fetch per key at a time, however many requests want it.
//  4. Retry the request once with "Authorization: Bearer <token>".
//
// A Basic challenge is answered with a single retry in Basic auth instead.
// Only replayable requests are retried (no body, or GetBody set). Whenever
// the handshake fails the caller gets the registry's own 401, challenge and
// body included, never an error of ours in its place.
type Transport struct {
	inner http.RoundTripper
	keys  Keyring
	now   func() time.Time
	log   *slog.Logger

	mu       sync.Mutex // guards tokens and inflight; never held during I/O
	tokens   map[tokenKey]cached
	inflight map[tokenKey]*flight
}

var _ http.RoundTripper = (*Transport)(nil)

// New returns a Transport that sends through inner (nil means
// http.DefaultTransport) and takes credentials from a copy of keys.
func New(inner http.RoundTripper, keys Keyring, opts Options) *Transport {
	if inner == nil {
		inner = http.DefaultTransport
	}
	t := &Transport{
		inner: inner, keys: Merge(nil, keys), now: opts.Now, log: opts.Logger,
		tokens: map[tokenKey]cached{}, inflight: map[tokenKey]*flight{},
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
	// A client that brings its own credentials always wins: its token may
	// grant what ours does not, and it is not ours to replace.
	if req.Header.Get("Authorization") != "" {
		return t.inner.RoundTrip(req)
	}
	host := strings.ToLower(req.URL.Host)
	if host == "" {
		host = strings.ToLower(req.Host)
	}
	creds, ok := t.keys.Lookup(host)
	if !ok {
		return t.inner.RoundTrip(req)
	}
	return t.authorized(req, tokenKey{host, guessScope(req.URL.Path)}, creds)
}

// CloseIdleConnections closes the idle connections of the inner transport,
// if it has any.
func (t *Transport) CloseIdleConnections() {
	if c, ok := t.inner.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// authorized sends req with whatever credentials are cached for key and, on
// a 401 it can answer, once more with fresh ones. The Authorization values
// it adds only ever go to key.host, the host they were configured or issued
// for: the cache is keyed by it.
func (t *Transport) authorized(req *http.Request, key tokenKey, creds Credentials) (*http.Response, error) {
	sentKey, sent := t.cached(key)
	resp, err := t.inner.RoundTrip(withAuth(req, sent))
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	if sent != "" {
		t.forget(sentKey, sent) // refused: revoked, expired early, or too narrow
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
// worked are sent up front from now on; a fresh token that was refused all
// the same is not sent again.
func (t *Transport) settle(key tokenKey, auth string, worked bool) {
	switch {
	case worked && strings.HasPrefix(auth, "Basic "):
		t.put(tokenKey{key.host, basicScope}, auth, t.now().Add(basicTTL))
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
		// The very credentials we have were just refused: no point.
		return basicAuth(creds), !strings.HasPrefix(sent, "Basic ")
	}
	auth, err := t.token(req.Context(), key, ch, creds)
	return auth, err == nil // fill logged the failure, once for all waiters
}

// cached returns the fresh Authorization value for key, or the host's
// remembered Basic credentials, with the key it was found under.
func (t *Transport) cached(key tokenKey) (tokenKey, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for _, k := range []tokenKey{key, {key.host, basicScope}} {
		if c, ok := t.tokens[k]; ok && now.Before(c.expires) {
			return k, c.auth
		}
	}
	return key, ""
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

// guessScope guesses the token scope a request path needs, so that a cached
// token can be sent before any challenge: "/v2/<name>/manifests/<ref>",
// "/v2/<name>/blobs/<digest>" and "/v2/<name>/tags/list" need
// "repository:<name>:pull"; anything else (the "/v2/" ping, say) gets "".
func guessScope(path string) string {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return ""
	}
	segs := strings.Split(rest, "/")
	n := len(segs)
	if n < 3 || slices.Contains(segs[:n-2], "") {
		return ""
	}
	switch segs[n-2] {
	case "manifests", "blobs", "tags":
		return "repository:" + strings.Join(segs[:n-2], "/") + ":pull"
	}
	return ""
}
