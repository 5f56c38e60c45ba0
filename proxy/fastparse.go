package proxy

import (
	"bytes"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

// parseFastRequest parses the header block in buf (headerEnd's length)
// as the fast path serves it, or reports false. It accepts a strict
// subset of what net/http accepts and parses it the same way
// (FuzzParseFastRequest holds it to http.ReadRequest): a request line
// "GET|HEAD /v2/…/manifests/… HTTP/1.1", one Host, header lines of a
// token name and a value without control characters, and none of the
// headers that give a request a body or a protocol of its own
// (Content-Length, Transfer-Encoding, Trailer, Expect, Upgrade). Anything
// else is net/http's to read, so that no byte of a body can be taken for
// a request, and no request is read two ways.
//
// It fills req, which the caller gives its context (WithContext copies
// it: a req on the caller's stack costs no allocation).
func parseFastRequest(buf []byte, req *http.Request) bool {
	line, rest := cutLine(buf)
	method, target, ok := parseRequestLine(line)
	if !ok {
		return false
	}
	u, err := requestURL(target)
	if err != nil || u.Host != "" || !fastPath(u.Path) {
		return false
	}
	*req = http.Request{Method: method, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: make(http.Header, 8), Body: http.NoBody, RequestURI: target}
	for {
		line, rest = cutLine(rest)
		if len(line) == 0 {
			break
		}
		name, value, ok := parseHeaderLine(line)
		if !ok {
			return false
		}
		switch name {
		case "Host":
			if req.Host != "" || !plainHost(value) {
				return false
			}
			req.Host = value
		case "Content-Length", "Transfer-Encoding", "Trailer", "Expect", "Upgrade":
			return false
		default:
			req.Header[name] = append(req.Header[name], value)
		}
	}
	if req.Host == "" {
		return false
	}
	if p := req.Header["Pragma"]; len(p) > 0 && p[0] == "no-cache" && req.Header["Cache-Control"] == nil {
		req.Header["Cache-Control"] = []string{"no-cache"} // as net/http reads it
	}
	req.Close = hasToken(req.Header["Connection"], "close")
	return true
}

// requestURL parses a request target as url.ParseRequestURI does,
// without its work for the common target: a path of letters, digits and
// "/._-:~@", which it would copy into Path as it is.
func requestURL(target string) (*url.URL, error) {
	for i := 0; i < len(target); i++ {
		c := target[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '/', c == '.', c == '_', c == '-', c == ':', c == '~', c == '@':
		default:
			return url.ParseRequestURI(target)
		}
	}
	return &url.URL{Path: target}, nil
}

// fastPath reports whether path is a manifest's, the fast path's concern.
func fastPath(path string) bool {
	return strings.HasPrefix(path, "/v2/") && strings.Contains(path, "/manifests/")
}

// cutLine splits buf after its first line, dropping the line's CRLF or
// LF.
func cutLine(buf []byte) (line, rest []byte) {
	i := bytes.IndexByte(buf, '\n')
	if i < 0 {
		return buf, nil
	}
	line, rest = buf[:i], buf[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// parseRequestLine splits "METHOD TARGET HTTP/1.1" for GET and HEAD.
func parseRequestLine(line []byte) (method, target string, ok bool) {
	m, rest, ok1 := bytes.Cut(line, []byte{' '})
	t, proto, ok2 := bytes.Cut(rest, []byte{' '})
	if !ok1 || !ok2 || string(proto) != "HTTP/1.1" || len(t) == 0 || t[0] != '/' {
		return "", "", false
	}
	switch string(m) {
	case http.MethodGet:
		method = http.MethodGet
	case http.MethodHead:
		method = http.MethodHead
	default:
		return "", "", false
	}
	for _, c := range t {
		if c <= ' ' || c == 0x7f || c == '#' {
			return "", "", false
		}
	}
	return method, string(t), true
}

// parseHeaderLine splits "Name: value", the name canonical and the value
// trimmed of spaces and tabs, as textproto does. A line folded onto the
// previous one, a name that is not a token, or a value with a control
// character other than tab is refused.
func parseHeaderLine(line []byte) (name, value string, ok bool) {
	n, v, found := bytes.Cut(line, []byte{':'})
	if !found || len(n) == 0 {
		return "", "", false
	}
	for _, c := range n {
		if !isTokenByte(c) {
			return "", "", false
		}
	}
	v = bytes.Trim(v, " \t")
	for _, c := range v {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return "", "", false
		}
	}
	return headerName(n), string(v), true
}

// headerName returns the canonical form of n, without allocating for the
// names registry clients send with every request.
func headerName(n []byte) string {
	switch string(n) {
	case "Host":
		return "Host"
	case "User-Agent":
		return "User-Agent"
	case "Accept":
		return "Accept"
	case "Accept-Encoding":
		return "Accept-Encoding"
	case "Authorization":
		return "Authorization"
	case "Connection":
		return "Connection"
	case "If-None-Match":
		return "If-None-Match"
	}
	return textproto.CanonicalMIMEHeaderKey(string(n))
}

// isTokenByte reports whether c may appear in a header name (RFC 9110
// §5.6.2).
func isTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}
