package proxy

import (
	"context"
	"net/http"
	"sync"
)

// tagMemo remembers the last tag query worked out on one intercepted
// connection, and its record key. A client asks for the same tag with the
// same Accept list again and again on one connection (a poll, a pull's
// HEAD then GET), and normalising the list and hashing the key cost more
// than the rest of a tag hit. It holds what it compares only as long as
// the connection that sent it.
type tagMemo struct {
	mu       sync.Mutex // guards the rest
	path     string     // the request's, as it came
	rawQuery string
	accept   string
	q        tagQuery
	key      string
}

type tagMemoKey struct{}

// withTagMemo gives the requests of one connection a tagMemo.
func withTagMemo(ctx context.Context) context.Context {
	return context.WithValue(ctx, tagMemoKey{}, new(tagMemo))
}

// tagQueryAndKey returns tagQueryOf(r, rp) and its record key, from the
// connection's memo when r asks what the connection's previous tag
// request asked (same path, query and single Accept header).
func tagQueryAndKey(r *http.Request, rp regPath) (tagQuery, string) {
	memo, ok := r.Context().Value(tagMemoKey{}).(*tagMemo)
	accept := r.Header["Accept"]
	if !ok || len(accept) > 1 {
		q := tagQueryOf(r, rp)
		return q, q.key()
	}
	one := ""
	if len(accept) == 1 {
		one = accept[0]
	}
	memo.mu.Lock()
	defer memo.mu.Unlock()
	if memo.key == "" || memo.path != r.URL.Path || memo.rawQuery != r.URL.RawQuery || memo.accept != one {
		q := tagQueryOf(r, rp)
		memo.path, memo.rawQuery, memo.accept, memo.q, memo.key = r.URL.Path, r.URL.RawQuery, one, q, q.key()
	}
	return memo.q, memo.key
}
