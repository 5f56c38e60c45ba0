package upstreamauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

const (
	// maxTokenBody bounds the token server's answer: a token is a few KiB.
	maxTokenBody = 64 << 10
	// tokenTimeout bounds one token fetch, which belongs to no one request.
	tokenTimeout = 30 * time.Second
	// defaultTokenLife is assumed when the server gives no expires_in, as
	// the token spec says.
	defaultTokenLife = 60 * time.Second
	// maxTokens bounds the token cache. Its keys come from paths that
	// clients choose, so without a bound any client could grow it without
	// end with made-up repository names. The least recently used entry
	// goes first. 1024 entries are a few MiB for tokens of a few KiB (64
	// MiB if every token were maxTokenBody long), and more repositories
	// than a cluster pulls within a token's life.
	maxTokens = 1024
)

// tokenKey names a cache entry: a registry "host:port" and the pull scope
// of the request path ("repository:NAME:pull", or "" for the ping).
type tokenKey struct{ host, scope string }

// cached is a ready Authorization value and when to stop sending it.
type cached struct {
	auth    string
	expires time.Time
}

// flight is a token fetch in progress. auth and err are set before done is
// closed.
type flight struct {
	done chan struct{}
	auth string
	err  error
}

// token returns "Bearer <token>" for key, from the cache or from the realm
// of challenge ch. Concurrent callers for one key share one fetch; each
// waits only as long as its own ctx allows.
func (t *Transport) token(ctx context.Context, key tokenKey, ch challenge, creds Credentials) (string, error) {
	t.mu.Lock()
	if auth := t.freshLocked(key); auth != "" {
		t.mu.Unlock() // another request refreshed it meanwhile
		return auth, nil
	}
	f, ok := t.inflight[key]
	if !ok {
		f = &flight{done: make(chan struct{})}
		t.inflight[key] = f
		go t.fill(ctx, key, f, ch, creds)
	}
	t.mu.Unlock()
	select {
	case <-f.done:
		return f.auth, f.err
	case <-ctx.Done():
		return "", context.Cause(ctx)
	}
}

// fill runs one token fetch for key and publishes its result. It is detached
// from the request that started it (others wait on it too) and bounded by
// tokenTimeout. The token asked for may pull and do nothing else, whatever
// the challenge wanted: it is fetched for a pull, with the configured
// credentials.
func (t *Transport) fill(ctx context.Context, key tokenKey, f *flight, ch challenge, creds Credentials) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tokenTimeout)
	defer cancel()
	scope := pullScopes(ch.params["scope"])
	if scope == "" {
		scope = key.scope
	}
	tok, expires, err := t.fetchToken(ctx, key.host, ch, scope, creds)
	if err != nil {
		t.log.Warn("upstream token failed", "host", key.host, "scope", scope, "err", err)
		f.err = err
	} else {
		t.log.Debug("upstream token", "host", key.host, "scope", scope, "until", expires)
		f.auth = "Bearer " + tok
	}
	t.mu.Lock()
	delete(t.inflight, key)
	if err == nil {
		t.putLocked(key, f.auth, expires)
	}
	t.mu.Unlock()
	close(f.done)
}

// fetchToken asks the realm of ch for a token for scope (space-separated
// scopes become repeated parameters), sending creds as Basic auth.
func (t *Transport) fetchToken(ctx context.Context, host string, ch challenge, scope string, creds Credentials) (string, time.Time, error) {
	u, err := checkRealm(ch.params["realm"], host)
	if err != nil {
		return "", time.Time{}, err
	}
	q := u.Query()
	if s := ch.params["service"]; s != "" {
		q.Set("service", s)
	}
	for _, s := range strings.Fields(scope) {
		q.Add("scope", s)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("token request to %s: %w", u.Host, err)
	}
	if !creds.none() {
		req.SetBasicAuth(creds.Username, creds.Password)
	}
	// A bare RoundTrip, not an http.Client: no redirect is followed, so the
	// credentials reach the realm host and no other.
	resp, err := t.inner.RoundTrip(req)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("token from %s: %w", u.Host, err)
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		// The body is not quoted: token servers echo too much.
		return "", time.Time{}, fmt.Errorf("token from %s: %s", u.Host, resp.Status)
	}
	tok, expires, err := parseToken(io.LimitReader(resp.Body, maxTokenBody), t.now())
	if err != nil {
		return "", time.Time{}, fmt.Errorf("token from %s: %w", u.Host, err)
	}
	return tok, expires, nil
}

// checkRealm parses a challenge realm and decides whether the configured
// credentials may be sent there. https anywhere is fine: the registry named
// the realm and TLS authenticates it. Plain http is refused unless it points
// back at the registry's own host name, because Basic auth in clear text to
// a third party is exactly what a hostile or spoofed challenge would want.
func checkRealm(realm, registryHost string) (*url.URL, error) {
	u, err := url.Parse(realm)
	if err != nil || u.Host == "" {
		return nil, errors.New("challenge realm is not an absolute URL")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !strings.EqualFold(u.Hostname(), hostOf(registryHost)) {
			return nil, fmt.Errorf("refusing plain-http realm on %s, a host other than the registry", u.Host)
		}
	default:
		return nil, fmt.Errorf("refusing realm scheme %q", u.Scheme)
	}
	u.User, u.Fragment = nil, "" // credentials go in our header, nowhere else
	return u, nil
}

// tokenResponse is the token server's answer; see
// https://distribution.github.io/distribution/spec/auth/token/#token-response-fields
type tokenResponse struct {
	Token       string  `json:"token"`
	AccessToken string  `json:"access_token"`
	ExpiresIn   float64 `json:"expires_in"`
	IssuedAt    string  `json:"issued_at"`
}

// parseToken reads a token response and returns the token and when to stop
// using it: a tenth of its life early, so that it does not expire in flight.
func parseToken(r io.Reader, now time.Time) (string, time.Time, error) {
	var tr tokenResponse
	if err := json.NewDecoder(r).Decode(&tr); err != nil {
		return "", time.Time{}, fmt.Errorf("token response: %w", err)
	}
	tok := tr.Token
	if tok == "" {
		tok = tr.AccessToken
	}
	if tok == "" || strings.IndexFunc(tok, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
		return "", time.Time{}, errors.New("token response holds no usable token")
	}
	life := time.Duration(tr.ExpiresIn * float64(time.Second))
	if life <= 0 {
		life = defaultTokenLife
	}
	// issued_at only ever shortens the life: a token that aged in the
	// server's cache expires sooner, but a server clock ahead of ours must
	// not stretch it, nor one far behind void it on arrival.
	start := now
	if at, err := time.Parse(time.RFC3339, tr.IssuedAt); err == nil && at.Before(now) && now.Sub(at) < life/2 {
		start = at
	}
	return tok, start.Add(life - life/10), nil
}

// put caches auth for key until expires.
func (t *Transport) put(key tokenKey, auth string, expires time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.putLocked(key, auth, expires)
}

func (t *Transport) putLocked(key tokenKey, auth string, expires time.Time) {
	t.tokens.Add(key, cached{auth: auth, expires: expires}) // evicts the oldest past maxTokens
}

// freshLocked returns key's Authorization value if it has not expired, or
// "". An expired entry is dropped on the way.
func (t *Transport) freshLocked(key tokenKey) string {
	c, ok := t.tokens.Get(key)
	if !ok {
		return ""
	}
	if !t.now().Before(c.expires) {
		t.tokens.Remove(key)
		return ""
	}
	return c.auth
}

// forget drops key's entry if it still holds auth, which upstream refused;
// a fresher value stored meanwhile by another request stays.
func (t *Transport) forget(key tokenKey, auth string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c, ok := t.tokens.Peek(key); ok && c.auth == auth {
		t.tokens.Remove(key)
	}
}
