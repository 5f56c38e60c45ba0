package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"
)

// Cache outcomes, as they appear in the access log.
const (
	outcomeHit         = "HIT"         // served from the cache
	outcomeMiss        = "MISS"        // fetched upstream (and cached)
	outcomeJoin        = "MISS-JOINED" // served by a fill another request started
	outcomeStale       = "STALE"       // upstream failed; an expired manifest was served
	outcomeRevalidated = "REVALIDATED" // expired copy confirmed by a HEAD upstream
	outcomePass        = "PASS"        // passed through, not cacheable
	outcomeOffline     = "OFFLINE"     // upstream unreachable or unhealthy; regproxy answered the /v2/ ping
	outcomeError       = "ERROR"       // answered with an error by regproxy
	outcomeLocal       = "LOCAL"       // a page of regproxy's own (/ca.crt, /healthz, /metrics)
	outcomeTunnel      = "TUNNEL"      // CONNECT tunnelled to a host that is not intercepted
	outcomeDenied      = "DENIED"      // refused: credentials, policy, malformed CONNECT

	abortedSuffix = "-ABORTED" // appended when a response is cut partway
)

// reqInfo is what a handler tells the access log about its request.
type reqInfo struct {
	kind, repo, ref, outcome string
}

type infoKey struct{}

// describe records what an intercepted request asks for (see describePath).
func describe(r *http.Request) {
	if info, ok := r.Context().Value(infoKey{}).(*reqInfo); ok {
		info.kind, info.repo, info.ref = describePath(r)
	}
}

// setOutcome records the cache outcome.
func setOutcome(r *http.Request, outcome string) {
	if info, ok := r.Context().Value(infoKey{}).(*reqInfo); ok {
		info.outcome = outcome
	}
}

// recorder remembers the status and body size of a response.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *recorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush passes through, for streamed pass-through responses.
func (w *recorder) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// accessLog writes one line per request, also for requests whose handler
// aborts the connection (the panic continues after the line is written).
// A request whose context already holds its reqInfo (the fast path puts
// one there, to spare a copy of the request) is logged with that one.
func (p *Proxy) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		info, given := r.Context().Value(infoKey{}).(*reqInfo)
		if !given {
			info = &reqInfo{outcome: outcomePass}
			r = r.WithContext(context.WithValue(r.Context(), infoKey{}, info))
		}
		rec := &recorder{ResponseWriter: w}
		var body *countingBody
		if r.Body != http.NoBody && r.Body != nil {
			body = &countingBody{ReadCloser: r.Body}
			r.Body = body
		}
		host := targetOf(r)
		if host == "" {
			host = r.Host
		}
		line := func() entry {
			status := rec.status
			if status == 0 {
				status = http.StatusOK // net/http's default when nothing was written
			}
			return entry{host: host, kind: info.kind, repo: info.repo, ref: info.ref, outcome: info.outcome,
				status: status, bytes: rec.bytes, bytesIn: body.read(), duration: time.Since(start)}
		}
		defer func() {
			if v := recover(); v != nil {
				info.outcome += abortedSuffix
				p.logEntry(r, line())
				panic(v)
			}
			p.logEntry(r, line())
		}()
		next.ServeHTTP(rec, r)
	})
}

// countingBody counts the bytes read from a request body. A pass-through
// may still be sending the body upstream when its handler returns, hence
// the atomic.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

// read is how many bytes were read; 0 for no body (a nil b).
func (b *countingBody) read() int64 {
	if b == nil {
		return 0
	}
	return b.n.Load()
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// entry is one access-log line.
type entry struct {
	host     string // the CONNECT target, or the Host of a plain request
	kind     string // what an intercepted request asks for (describePath); "" on the proxy port
	repo     string
	ref      string
	outcome  string
	status   int
	bytes    int64 // sent to the client: the response body, or all a tunnel relayed to it
	bytesIn  int64 // received from the client: the request body, or all a tunnel relayed from it
	duration time.Duration
	err      error // why a tunnel failed; other errors have a line of their own
}

// logLine writes an access-log line for a request answered on the proxy
// port without a body either way.
func (p *Proxy) logLine(r *http.Request, host, repo, ref, outcome string, status int, bytes int64, d time.Duration) {
	p.logEntry(r, entry{host: host, repo: repo, ref: ref, outcome: outcome, status: status, bytes: bytes, duration: d})
}

// logEntry writes one access-log line, and counts the request in the
// metrics. It never logs headers or query strings, which may carry tokens.
// Under --htpasswd it names the user who authenticated the CONNECT, but
// never a password. A line with an error is a warning.
func (p *Proxy) logEntry(r *http.Request, e entry) {
	p.count(e)
	// Room for every attribute: the line's attributes stay off the heap.
	var room [13]slog.Attr
	attrs := append(room[:0],
		slog.String("method", r.Method),
		slog.String("host", e.host),
		slog.String("kind", e.kind),
		slog.String("repo", e.repo),
		slog.String("ref", e.ref),
		slog.String("outcome", e.outcome),
		slog.Int("status", e.status),
		slog.Int64("bytes", e.bytes),
		slog.Int64("bytes_in", e.bytesIn),
		slog.Duration("duration", e.duration),
	)
	level := slog.LevelInfo
	if isProbe(r, e) {
		level = slog.LevelDebug
	}
	if e.err != nil {
		attrs = append(attrs, slog.String("error", e.err.Error()))
		level = slog.LevelWarn
	}
	if user := userOf(r); user != "" {
		attrs = append(attrs, slog.String("user", user))
	}
	if e.kind != "" { // a registry request: intercepted, or on the mirror port
		attrs = append(attrs, slog.String("front", frontOf(r.Context())))
	}
	p.log.LogAttrs(r.Context(), level, "request", attrs...)
}

// ReadFrom hands bulk copies to the connection's own pooled copy, so that
// serving a blob allocates no buffer per request.
func (w *recorder) ReadFrom(src io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(struct{ io.Writer }{w.ResponseWriter}, src)
	}
	w.bytes += n
	return n, err
}

// isProbe reports whether e answered a health check, a metrics scrape or
// the status page: a liveness probe every ten seconds, a scrape every
// fifteen and an open status page refreshing every five would otherwise
// fill the log with lines nobody reads. They are logged at debug level,
// and counted in the metrics all the same; a failed one stays at info.
func isProbe(r *http.Request, e entry) bool {
	if e.outcome != outcomeLocal || e.status >= http.StatusBadRequest {
		return false
	}
	switch r.URL.Path {
	case "/healthz", "/metrics", "/", "/status.json":
		return true
	}
	return false
}
