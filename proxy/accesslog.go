package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"time"
)

// Cache outcomes, as they appear in the access log.
const (
	outcomeHit         = "HIT"         // served from the cache
	outcomeMiss        = "MISS"        // fetched upstream (and cached)
	outcomeJoin        = "MISS-JOINED" // served by a fill another request started
	outcomeStale       = "STALE"       // upstream failed; an expired copy was served
	outcomeRevalidated = "REVALIDATED" // expired copy confirmed by a HEAD upstream
	outcomePass        = "PASS"        // passed through, not cacheable
	outcomeError       = "ERROR"       // answered with an error by regproxy
	outcomeLocal       = "LOCAL"       // a page of regproxy's own (/ca.crt, /healthz)
)

// reqInfo is what a handler tells the access log about its request.
type reqInfo struct {
	repo, ref, outcome string
}

type infoKey struct{}

// label records the request's repository, reference and cache outcome.
func label(r *http.Request, p regPath, outcome string) {
	if info, ok := r.Context().Value(infoKey{}).(*reqInfo); ok {
		info.repo, info.ref, info.outcome = p.Name, p.Reference, outcome
	}
}

// setOutcome records the cache outcome alone.
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
func (p *Proxy) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		info := &reqInfo{outcome: outcomePass}
		rec := &recorder{ResponseWriter: w}
		r = r.WithContext(context.WithValue(r.Context(), infoKey{}, info))
		host := targetOf(r)
		if host == "" {
			host = r.Host
		}
		defer func() {
			status := rec.status
			if status == 0 {
				status = http.StatusOK // net/http's default when nothing was written
			}
			if v := recover(); v != nil {
				info.outcome += "-ABORTED"
				p.logLine(r, host, info.repo, info.ref, info.outcome, status, rec.bytes, time.Since(start))
				panic(v)
			}
			p.logLine(r, host, info.repo, info.ref, info.outcome, status, rec.bytes, time.Since(start))
		}()
		next.ServeHTTP(rec, r)
	})
}

// logLine writes one access-log line. It never logs headers or query
// strings, which may carry tokens. Under --htpasswd it names the user who
// authenticated the CONNECT, but never a password.
func (p *Proxy) logLine(r *http.Request, host, repo, ref, outcome string, status int, bytes int64, d time.Duration) {
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("host", host),
		slog.String("repo", repo),
		slog.String("ref", ref),
		slog.String("outcome", outcome),
		slog.Int("status", status),
		slog.Int64("bytes", bytes),
		slog.Duration("duration", d),
	}
	if user := userOf(r); user != "" {
		attrs = append(attrs, slog.String("user", user))
	}
	p.log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
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
