package proxy

import (
	"bufio"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// fastResponse is the http.ResponseWriter of the fast path (fastpath.go).
// It frames a response as net/http's server does for the same handler
// calls (TestFastResponseMatchesNetHTTP compares the two): the status
// line, the headers as they were at WriteHeader plus Date, a
// Content-Length it works out when the whole body fits in what it holds
// back, chunked encoding when it does not and the handler declared no
// length, no body for HEAD, 1xx, 204 and 304, and a Content-Type sniffed
// from the first bytes when the handler set none.
type fastResponse struct {
	bw     *bufio.Writer
	req    *http.Request
	header http.Header // the handler's
	sent   http.Header // header as it was at WriteHeader; nil once committed

	status      int   // 0 until WriteHeader or the first Write
	declared    int64 // the handler's Content-Length; -1 when it set none
	written     int64 // body bytes the handler wrote
	held        []byte
	committed   bool // the header block is in bw
	chunked     bool
	closeAfter  bool  // the connection ends after this response
	writeFailed error // the connection failed; the handler's writes are dropped
}

// fastHeld bounds the body fastResponse holds back before it commits to a
// header block, as net/http's bufferBeforeChunkingSize does: a body that
// ends within it gets a Content-Length.
const fastHeld = 2048

// reset makes w a new response to req, keeping its header map and held
// buffer: a connection answers its requests one at a time, and nothing
// holds a ResponseWriter after its handler returned.
func (w *fastResponse) reset(bw *bufio.Writer, req *http.Request) {
	header, held := w.header, w.held[:0]
	if header == nil {
		header = make(http.Header)
	}
	clear(header)
	*w = fastResponse{bw: bw, req: req, header: header, held: held, declared: -1, closeAfter: req.Close}
}

// Header returns the headers the response will carry.
func (w *fastResponse) Header() http.Header { return w.header }

// WriteHeader sets the status. Informational statuses are written at once
// and do not count as the status. Later changes to the header map are not
// sent: the header block is written now when nothing in it waits for the
// body (a declared length and type, or a status without a body), and
// copied otherwise.
func (w *fastResponse) WriteHeader(code int) {
	if w.status != 0 {
		return // superfluous, as net/http treats it
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.writeInformational(code)
		return
	}
	w.status = code
	if cl := w.header["Content-Length"]; len(cl) > 0 {
		if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
			w.declared = n
		} else {
			delete(w.header, "Content-Length") // net/http drops a malformed one too
		}
	}
	_, typed := w.header["Content-Type"]
	if !bodyAllowed(code) || (w.declared >= 0 && typed) {
		w.sent = w.header
		w.commit(false, nil)
		return
	}
	w.sent = w.header.Clone()
}

// writeInformational sends a 1xx response with the handler's headers but
// those of framing, which a 1xx may not carry.
func (w *fastResponse) writeInformational(code int) {
	w.bw.WriteString(statusLine(code))
	writeHeaderLines(w.bw, w.header, true)
	w.bw.WriteString("\r\n")
	if err := w.bw.Flush(); err != nil {
		w.fail(err)
	}
}

// Write writes body bytes, held back until fastHeld or a Flush, or sent
// at once when the handler declared their length.
func (w *fastResponse) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if len(b) == 0 {
		return 0, nil
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(b))
	if w.declared >= 0 && w.written > w.declared {
		w.closeAfter = true // as net/http: the connection is out of step
		return 0, http.ErrContentLength
	}
	if w.writeFailed != nil {
		return 0, w.writeFailed
	}
	if !w.committed {
		if w.declared < 0 && len(w.held)+len(b) <= fastHeld {
			w.held = append(w.held, b...)
			return len(b), nil
		}
		w.commit(false, b)
	}
	if w.req.Method == http.MethodHead {
		return len(b), nil // eaten, as net/http eats them
	}
	return w.send(b)
}

// send writes b to the connection, in a chunk when chunked.
func (w *fastResponse) send(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if w.chunked {
		w.bw.WriteString(strconv.FormatInt(int64(len(b)), 16))
		w.bw.WriteString("\r\n")
	}
	n, err := w.bw.Write(b)
	if w.chunked && err == nil {
		_, err = w.bw.WriteString("\r\n")
	}
	if err != nil {
		w.fail(err)
	}
	return n, err
}

func (w *fastResponse) fail(err error) {
	w.writeFailed = err
	w.closeAfter = true
}

// Flush sends the header block and what the handler wrote so far.
func (w *fastResponse) Flush() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(false, nil)
	}
	if err := w.bw.Flush(); err != nil {
		w.fail(err)
	}
}

// finish ends the response after the handler returned, and reports
// whether the connection can carry another request.
func (w *fastResponse) finish() (keepAlive bool) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(true, nil)
	}
	if w.chunked {
		w.bw.WriteString("0\r\n\r\n")
	}
	if w.declared >= 0 && w.written < w.declared && w.hasBody() {
		w.closeAfter = true // the client waits for bytes that never come
	}
	if err := w.bw.Flush(); err != nil {
		w.fail(err)
	}
	return !w.closeAfter
}

// hasBody reports whether the response carries a body on the wire.
func (w *fastResponse) hasBody() bool {
	return w.req.Method != http.MethodHead && bodyAllowed(w.status)
}

// commit writes the header block, and the held body after it. done says
// the handler returned, so the held body is the whole body; next is the
// write that made it commit, if one did (its first bytes are sniffed
// when nothing was held).
func (w *fastResponse) commit(done bool, next []byte) {
	w.committed = true
	h := w.sent
	w.sent = nil
	if _, ok := h["Date"]; !ok {
		h["Date"] = httpDate()
	}
	if hasToken(h["Connection"], "close") {
		w.closeAfter = true
	}
	handlerTE := w.frame(h, done)
	w.sniff(h, next, handlerTE)
	if w.closeAfter {
		h["Connection"] = []string{"close"}
	}
	w.bw.WriteString(statusLine(w.status))
	writeHeaderLines(w.bw, h, false)
	w.bw.WriteString("\r\n")
	held := w.held
	w.held = held[:0] // kept for the connection's next response (reset)
	if w.hasBody() {
		w.send(held)
	}
}

// frame sets the headers that frame the body, as net/http's server does,
// and reports whether the handler had set a Transfer-Encoding. The map's
// keys are canonical (Header's methods put them so), hence the plain map
// operations.
func (w *fastResponse) frame(h http.Header, done bool) (handlerTE bool) {
	te := ""
	if v := h["Transfer-Encoding"]; len(v) > 0 {
		te = v[0]
	}
	_, hasCL := h["Content-Length"]
	switch {
	case !bodyAllowed(w.status):
		delete(h, "Transfer-Encoding")
		delete(h, "Content-Length")
		if w.status == http.StatusNotModified {
			delete(h, "Content-Type")
		}
		return te != ""
	case done && te == "" && !hasCL && (w.req.Method != http.MethodHead || w.written > 0):
		h["Content-Length"] = []string{strconv.FormatInt(w.written, 10)}
		hasCL = true
	}
	switch {
	case w.req.Method == http.MethodHead || hasCL:
		delete(h, "Transfer-Encoding")
	case te == "identity": // the body ends when the connection does
		delete(h, "Transfer-Encoding")
		w.closeAfter = true
	default:
		h["Transfer-Encoding"] = []string{"chunked"}
		w.chunked = true
	}
	return te != ""
}

// sniff sets a Content-Type from the body's first bytes when the handler
// set none (not even an empty one), as net/http does: not for a body the
// handler encoded or framed itself (handlerTE).
func (w *fastResponse) sniff(h http.Header, next []byte, handlerTE bool) {
	if _, typed := h["Content-Type"]; typed || !bodyAllowed(w.status) {
		return
	}
	if h.Get("Content-Encoding") != "" || handlerTE {
		return
	}
	first := w.held
	if len(first) == 0 {
		first = next
	}
	if len(first) > 0 {
		h["Content-Type"] = []string{http.DetectContentType(first)}
	}
}

// writeHeaderLines writes h as http.Header.Write does: sorted by name,
// names that are not tokens left out, CR and LF in values made spaces, so
// that no value (some come from upstream) can add a header or end the
// block. An informational response leaves out the framing headers.
func writeHeaderLines(bw *bufio.Writer, h http.Header, informational bool) {
	var stack [16]string
	names := stack[:0]
	for name := range h {
		if informational && (name == "Content-Length" || name == "Transfer-Encoding") {
			continue
		}
		if httpguts.ValidHeaderFieldName(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		for _, v := range h[name] {
			bw.WriteString(name)
			bw.WriteString(": ")
			if strings.IndexByte(v, '\r') >= 0 || strings.IndexByte(v, '\n') >= 0 {
				v = headerNewlines.Replace(v)
			}
			bw.WriteString(strings.Trim(v, " \t\r\n"))
			bw.WriteString("\r\n")
		}
	}
}

var headerNewlines = strings.NewReplacer("\r", " ", "\n", " ")

// httpDate is the Date header of a response sent now, formatted once a
// second and shared by the responses of that second (capped, so that an
// append copies it; nothing changes a header after it is sent).
func httpDate() []string {
	now := time.Now()
	if d := lastDate.Load(); d != nil && d.unix == now.Unix() {
		return d.values
	}
	d := &formattedDate{unix: now.Unix(), values: []string{now.UTC().Format(http.TimeFormat)}}
	d.values = d.values[:1:1]
	lastDate.Store(d)
	return d.values
}

type formattedDate struct {
	unix   int64
	values []string
}

var lastDate atomic.Pointer[formattedDate]

// statusLine is the first line of a response with code.
func statusLine(code int) string {
	if code == http.StatusOK {
		return "HTTP/1.1 200 OK\r\n"
	}
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	return "HTTP/1.1 " + strconv.Itoa(code) + " " + text + "\r\n"
}

// bodyAllowed reports whether a response with status may carry a body
// (RFC 9110 §6.4.1).
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// hasToken reports whether a comma-separated header holds token, compared
// as ASCII without case, as net/http compares tokens.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if asciiEqualFold(strings.Trim(t, " \t"), token) {
				return true
			}
		}
	}
	return false
}

// asciiEqualFold is strings.EqualFold for ASCII only: "cloſe" is not
// "close".
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
