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
// calls: the status line, the handler's headers plus Date, a
// Content-Length it works out when the whole body fits in its buffer,
// chunked encoding when it does not and the handler declared no length,
// no body for HEAD, 1xx, 204 and 304, and a sniffed Content-Type when the
// handler set none.
type fastResponse struct {
	bw     *bufio.Writer
	req    *http.Request
	header http.Header

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
// header block: a body that ends within it gets a Content-Length.
const fastHeld = 4096

func newFastResponse(bw *bufio.Writer, req *http.Request) *fastResponse {
	return &fastResponse{bw: bw, req: req, header: make(http.Header), declared: -1,
		closeAfter: req.Close}
}

// Header returns the headers the response will carry.
func (w *fastResponse) Header() http.Header { return w.header }

// WriteHeader sets the status. Informational statuses are written at once
// and do not count as the status.
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
}

func (w *fastResponse) writeInformational(code int) {
	w.bw.WriteString(statusLine(code))
	writeHeaderLines(w.bw, w.header)
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
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if w.declared >= 0 && w.written+int64(len(b)) > w.declared {
		return 0, http.ErrContentLength
	}
	if w.writeFailed != nil {
		return 0, w.writeFailed
	}
	w.written += int64(len(b))
	if w.req.Method == http.MethodHead {
		if !w.committed && w.written > fastHeld {
			w.commit(false)
		}
		return len(b), nil
	}
	if !w.committed {
		if w.declared < 0 && len(w.held)+len(b) <= fastHeld {
			w.held = append(w.held, b...)
			return len(b), nil
		}
		w.commit(false)
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
		w.commit(false)
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
		w.commit(true)
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
// the handler returned, so the held body is the whole body.
func (w *fastResponse) commit(done bool) {
	w.committed = true
	h := w.header
	if _, ok := h["Date"]; !ok {
		h["Date"] = []string{httpDate()}
	}
	if v := h["Connection"]; len(v) > 0 && hasToken(v, "close") {
		w.closeAfter = true
	}
	// The map's keys are canonical (Header's methods put them so), hence
	// the plain map operations.
	switch {
	case !bodyAllowed(w.status):
		delete(h, "Transfer-Encoding")
		delete(h, "Content-Length")
		if w.status == http.StatusNotModified {
			delete(h, "Content-Type")
		}
	case w.declared >= 0:
		delete(h, "Transfer-Encoding")
	case done && (w.req.Method != http.MethodHead || w.written > 0):
		h["Content-Length"] = []string{strconv.FormatInt(w.written, 10)}
	case w.req.Method == http.MethodHead:
	default:
		h["Transfer-Encoding"] = []string{"chunked"}
		w.chunked = true
	}
	if _, ok := h["Content-Type"]; !ok && bodyAllowed(w.status) && len(w.held) > 0 {
		h["Content-Type"] = []string{http.DetectContentType(w.held)}
	}
	if w.closeAfter {
		h["Connection"] = []string{"close"}
	}
	w.bw.WriteString(statusLine(w.status))
	writeHeaderLines(w.bw, h)
	w.bw.WriteString("\r\n")
	held := w.held
	w.held = nil
	if w.hasBody() {
		w.send(held)
	}
}

// writeHeaderLines writes h as http.Header.Write does: sorted by name,
// names that are not tokens left out, CR and LF in values made spaces, so
// that no value (some come from upstream) can add a header or end the
// block.
func writeHeaderLines(bw *bufio.Writer, h http.Header) {
	var stack [16]string
	names := stack[:0]
	for name := range h {
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
			bw.WriteString(strings.TrimSpace(v))
			bw.WriteString("\r\n")
		}
	}
}

var headerNewlines = strings.NewReplacer("\r\n", " ", "\r", " ", "\n", " ")

// httpDate is the Date of a response sent now, formatted once a second.
func httpDate() string {
	now := time.Now()
	if d := lastDate.Load(); d != nil && d.unix == now.Unix() {
		return d.text
	}
	d := &formattedDate{unix: now.Unix(), text: now.UTC().Format(http.TimeFormat)}
	lastDate.Store(d)
	return d.text
}

type formattedDate struct {
	unix int64
	text string
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
