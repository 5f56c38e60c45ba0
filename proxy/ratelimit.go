package proxy

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// maxBackoff caps how long one Retry-After keeps regproxy away from a host.
const maxBackoff = time.Hour

// rateLimiter is the innermost upstream RoundTripper. After an upstream
// answers 429 with Retry-After, it answers further requests to that host
// with a 429 itself, without sending them, until the time has passed
// (RFC 9110, section 10.2.3). Callers see an ordinary 429: manifests fall
// back to a stale copy where one exists, everything else passes it on.
type rateLimiter struct {
	next http.RoundTripper
	now  func() time.Time
	log  *slog.Logger

	mu    sync.Mutex           // protects until
	until map[string]time.Time // host:port → end of its back-off

	limited atomic.Int64 // 429s seen upstream or answered during a back-off
}

var _ http.RoundTripper = (*rateLimiter)(nil)

func newRateLimiter(next http.RoundTripper, now func() time.Time, log *slog.Logger) *rateLimiter {
	return &rateLimiter{next: next, now: now, log: log, until: make(map[string]time.Time)}
}

func (rl *rateLimiter) RoundTrip(req *http.Request) (*http.Response, error) {
	if wait := rl.remaining(req.URL.Host); wait > 0 {
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
			rl.backOff(req.URL.Host, wait)
		}
		rl.log.Warn("upstream rate limit", "host", req.URL.Host, "retry_after", wait.String(), "total_429s", n)
	}
	return resp, err
}

// Limited reports how many 429s regproxy has seen or given for upstreams.
func (rl *rateLimiter) Limited() int64 { return rl.limited.Load() }

func (rl *rateLimiter) remaining(host string) time.Duration {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	until, ok := rl.until[host]
	if !ok {
		return 0
	}
	wait := until.Sub(rl.now())
	if wait <= 0 {
		delete(rl.until, host)
	}
	return wait
}

func (rl *rateLimiter) backOff(host string, wait time.Duration) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	rl.until[host] = rl.now().Add(min(wait, maxBackoff))
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
