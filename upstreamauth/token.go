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
	// pruneAt is the cache size past which expired entries are dropped.
	pruneAt = 1024
)

// tokenKey names a cache entry: a registry "host:port" and the token scope
// guessed from the request path (or basicScope).
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
	if c, ok := t.tokens[key]; ok && t.now().Before(c.expires) {
		t.mu.Unlock() // another request refreshed it meanwhile
		return c.auth, nil
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
// tokenTimeout.
func (t *Transport) fill(ctx context.Context, key tokenKey, f *flight, ch challenge, creds Credentials) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tokenTimeout)
	defer cancel()
	scope := ch.params["scope"]
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
	req.SetBasicAuth(creds.Username, creds.Password)
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
	if len(t.tokens) >= pruneAt {
		now := t.now()
		for k, c := range t.tokens {
			if !now.Before(c.expires) {
				delete(t.tokens, k)
			}
		}
	}
	t.tokens[key] = cached{auth: auth, expires: expires}
}

// forget drops key's entry if it still holds auth, which upstream refused;
// a fresher value stored meanwhile by another request stays.
func (t *Transport) forget(key tokenKey, auth string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tokens[key].auth == auth {
		delete(t.tokens, key)
	}
}
