package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"reflect"
	"testing"
)

// FuzzParseFastRequest holds the fast path's parser to net/http's: for
// any bytes it accepts, http.ReadRequest must read the same request, with
// no body, and the fast path's header-block length must be where
// ReadRequest stopped. A request the two read differently could smuggle
// bytes past one of them.
func FuzzParseFastRequest(f *testing.F) {
	for _, seed := range []string{
		"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: registry.test\r\nAccept: a, b\r\n\r\n",
		"HEAD /v2/a/b/manifests/sha256:abc HTTP/1.1\r\nHost: r.test:443\r\nConnection: close\r\n\r\n",
		"GET /v2/a/manifests/x?ns=docker.io HTTP/1.1\nHost: h\nPragma: no-cache\n\n",
		"GET /v2/a/manifests/x HTTP/1.1\r\nHost: h\r\nauthorization:  Bearer t \r\nX: 1\r\nx: 2\r\n\r\n",
		"GET /v2/a/manifests/%2e%2e HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n",
		"GET /v2/a/manifests/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
		"GET /v2/a/manifests/x HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
		"GET http://h/v2/a/manifests/x HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET //v2/a/manifests/x HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /v2/a/manifests/sha256:0f@~x_y-z.1 HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n := headerEnd(data)
		if n == 0 {
			return
		}
		fast := new(http.Request)
		if !parseFastRequest(data[:n], fast) {
			return
		}
		br := bufio.NewReader(bytes.NewReader(data))
		ref, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("fast path accepts %q; net/http refuses it: %v", data[:n], err)
		}
		if read := len(data) - br.Buffered(); read != n {
			t.Fatalf("fast path's header block is %d bytes, net/http read %d: %q", n, read, data)
		}
		if ref.ContentLength != 0 || ref.TransferEncoding != nil || ref.Body != http.NoBody {
			t.Fatalf("fast path accepts a request with a body: %q", data)
		}
		if !fastPath(ref.URL.Path) {
			t.Fatalf("not a manifest path to net/http: %q", ref.URL.Path)
		}
		same := fast.Method == ref.Method && *fast.URL == *ref.URL && fast.URL.String() == ref.URL.String() &&
			fast.URL.Path == ref.URL.Path && fast.URL.RawQuery == ref.URL.RawQuery &&
			fast.RequestURI == ref.RequestURI && fast.Host == ref.Host && fast.Close == ref.Close &&
			fast.Proto == ref.Proto && reflect.DeepEqual(fast.Header, ref.Header)
		if !same {
			t.Fatalf("read differently:\n fast    %s %s host=%q close=%v %v\n net/http %s %s host=%q close=%v %v",
				fast.Method, fast.URL, fast.Host, fast.Close, fast.Header,
				ref.Method, ref.URL, ref.Host, ref.Close, ref.Header)
		}
	})
}
