package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// maxBackoff caps how long one Retry-After keeps regproxy away from a host.
const maxBackoff = time.Hour

// maxBackoffs bounds how many (host, credential) back-offs are kept. The
// credentials are the clients' choice, so the table must not grow with
// them; losing the oldest back-off costs at most one more 429 upstream.
const maxBackoffs = 4096

// rateLimiter is the innermost upstream RoundTripper. After an upstream
// answers 429 with Retry-After, it answers further requests to that host
// with the same credential with a 429 itself, without sending them, until
// the time has passed (RFC 9110, section 10.2.3). Callers see an ordinary
// 429: manifests fall back to a stale copy where one exists, everything
// else passes it on.
//
// Registries limit per account (or per address for anonymous pulls), so a
// back-off is keyed by the host and the Authorization the request carried:
// a 429 one tenant earns, anonymously or with its own account, does not
// lock out clients with other credentials, and regproxy's own pulls with
// configured credentials are tracked apart from both.
type rateLimiter struct {
	next http.RoundTripper
	now  func() time.Time
	log  *slog.Logger

	until *lru.Cache[backoffKey, time.Time] // end of each back-off; safe for concurrent use

	limited atomic.Int64 // 429s seen upstream or answered during a back-off
}

// backoffKey names whom a back-off applies to: a host:port and a hash of
// the Authorization header sent there ("" for anonymous requests).
type backoffKey struct{ host, credential string }

var _ http.RoundTripper = (*rateLimiter)(nil)

func newRateLimiter(next http.RoundTripper, now func() time.Time, log *slog.Logger) *rateLimiter {
	until, _ := lru.New[backoffKey, time.Time](maxBackoffs)
	return &rateLimiter{next: next, now: now, log: log, until: until}
}

func (rl *rateLimiter) RoundTrip(req *http.Request) (*http.Response, error) {
	key := backoffKeyOf(req)
	if wait := rl.remaining(key); wait > 0 {
		rl.limited.Add(1)
		if req.Body != nil {
			req.Body.Close()
		}
		return tooManyRequests(req, wait), nil
	}
	resp, err := rl.next.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests {
		n := rl.limited.Add(1)
		wait, ok := parseRetryAfter(resp.Header.Get("Retry-After"), rl.now())
		if ok {
			rl.backOff(key, wait)
		}
		rl.log.Warn("upstream rate limit", "host", req.URL.Host, "anonymous", key.credential == "",
			"retry_after", wait.String(), "total_429s", n)
	}
	return resp, err
}

// backoffKeyOf keys a request by host and credential. The credential is
// hashed: the table must not hold tokens or passwords.
func backoffKeyOf(req *http.Request) backoffKey {
	k := backoffKey{host: strings.ToLower(req.URL.Host)}
	if auth := req.Header.Get("Authorization"); auth != "" {
		sum := sha256.Sum256([]byte(auth))
		k.credential = hex.EncodeToString(sum[:16])
	}
	return k
}

// Limited reports how many 429s regproxy has seen or given for upstreams.
func (rl *rateLimiter) Limited() int64 { return rl.limited.Load() }

func (rl *rateLimiter) remaining(key backoffKey) time.Duration {
	until, ok := rl.until.Get(key)
	if !ok {
		return 0
	}
	wait := until.Sub(rl.now())
	if wait <= 0 {
		rl.until.Remove(key)
	}
	return wait
}

func (rl *rateLimiter) backOff(key backoffKey, wait time.Duration) {
	rl.until.Add(key, rl.now().Add(min(wait, maxBackoff)))
}

// parseRetryAfter reads delay-seconds or an HTTP-date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now), true
	}
	return 0, false
}

// tooManyRequests is the 429 regproxy gives while it backs off a host.
func tooManyRequests(req *http.Request, wait time.Duration) *http.Response {
	body := []byte(`{"errors":[{"code":"TOOMANYREQUESTS","message":"upstream rate limit; regproxy is backing off"}]}`)
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
	return &http.Response{
		Status: "429 Too Many Requests", StatusCode: http.StatusTooManyRequests,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)),
		Request: req,
	}
}
