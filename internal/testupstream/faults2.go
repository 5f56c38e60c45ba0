package testupstream

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"time"
)

// StallBlobAfter returns a Fault that simulates an upstream that hangs
// mid-blob: for the request that carries a blob's bytes (see CutBlobAfter)
// it sends the real headers, including the full Content-Length, and the
// first n body bytes, and then sends nothing more, holding the connection
// open until the client goes away. Blobs of n bytes or fewer pass whole.
// The Fault works only when installed with SetFault.
func StallBlobAfter(n int64) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		next, ok := r.Context().Value(nextKey{}).(http.Handler)
		if !ok || !carriesBlob(r) {
			return false
		}
		next.ServeHTTP(&stallWriter{ResponseWriter: w, r: r, left: n}, r)
		return true
	}
}

// stallWriter passes headers through and writes up to left body bytes. A
// write past that flushes what was allowed, waits for the client to go,
// and then aborts the handler.
type stallWriter struct {
	http.ResponseWriter
	r    *http.Request
	left int64
}

func (s *stallWriter) Write(p []byte) (int, error) {
	if int64(len(p)) <= s.left {
		n, err := s.ResponseWriter.Write(p)
		s.left -= int64(n)
		return n, err
	}
	s.ResponseWriter.Write(p[:s.left])
	s.left = 0
	http.NewResponseController(s.ResponseWriter).Flush()
	<-s.r.Context().Done()
	panic(http.ErrAbortHandler)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (s *stallWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// rangeRE is a single byte range with a first byte, RFC 9110 section 14.1.2.
var rangeRE = regexp.MustCompile(`^bytes=([0-9]+)-([0-9]*)$`)

// ShortRanges returns a Fault that answers every Range request for a
// blob's bytes (see CutBlobAfter) with at most n bytes of the range asked
// for: a correct 206 whose Content-Range names the shorter part, as a
// server that limits the size of its ranges sends. Other requests pass.
// The Fault works only when installed with SetFault.
func ShortRanges(n int64) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		next, ok := r.Context().Value(nextKey{}).(http.Handler)
		m := rangeRE.FindStringSubmatch(r.Header.Get("Range"))
		if !ok || !carriesBlob(r) || m == nil {
			return false
		}
		first, _ := strconv.ParseInt(m[1], 10, 64)
		last := first + n - 1
		if asked, err := strconv.ParseInt(m[2], 10, 64); err == nil {
			last = min(last, asked)
		}
		r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, last))
		next.ServeHTTP(w, r)
		return true
	}
}

// ExpireTokens makes every token the hub has issued so far invalid, as
// time does to Docker Hub's tokens after five minutes: a request that
// carries one gets 401 with error="invalid_token". Tokens issued later are
// valid. It does nothing outside hub mode.
func (u *Upstream) ExpireTokens() {
	if u.hub == nil {
		return
	}
	u.hub.mu.Lock()
	defer u.hub.mu.Unlock()
	for tok, g := range u.hub.tokens {
		g.expires = time.Now().Add(-time.Second)
		u.hub.tokens[tok] = g
	}
}
