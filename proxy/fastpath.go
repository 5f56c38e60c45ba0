package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The fast path serves manifest requests on an intercepted connection in
// the connection's own goroutine, before net/http sees the connection.
//
// Why: a tag hit is a few microseconds of work, and on a keep-alive
// connection net/http adds more than that around it. For every request it
// starts a goroutine that watches the connection for the next bytes and,
// when the handler returns, stops it by moving the read deadline and
// waiting for it: two handoffs between threads per request, which on a
// loaded two-core node cost more than the handler (see BENCHMARKS.md,
// scenario d). Serving the request in the goroutine that read it makes
// none.
//
// What it serves: GET and HEAD of /v2/…/manifests/… in HTTP/1.1, without a
// body or Expect, with one Host, whose header block arrives within
// fastHeaderBuffer bytes. Those are what clients send for tags and
// manifests, through the same handler net/http runs (access log, shutdown
// tracking and all). The first request that is anything else (a blob, an
// upload, a ping, an odd header) is not read: the connection, with the
// bytes already buffered, is handed to the registry server for good. So
// net/http's framing, limits and errors still answer everything the fast
// path does not know.
//
// What it gives up: the request's context is not cancelled when the
// client goes away while the handler runs (a manifest is small and its
// fetch upstream is bounded); the handler's panics are logged and cut the
// connection, as in net/http.

// fastHeaderBuffer bounds the header block the fast path reads: larger
// ones go to net/http, which allows maxHeaderBytes.
const fastHeaderBuffer = 4096

// fastConn is an intercepted connection served by the fast path.
type fastConn struct {
	conn       *tls.Conn
	br         *bufio.Reader   // what the client sent, read ahead
	bw         *bufio.Writer   // responses, flushed at each one's end
	ctx        context.Context // the connection's values, as ConnContext makes them
	remoteAddr string
	tlsState   *tls.ConnectionState
	served     int          // requests this connection answered here
	resp       fastResponse // the response being written, reused
	// deadline is the read deadline set last; headerDeadline says it
	// bounds a late header, not the wait for a request.
	deadline       time.Time
	headerDeadline bool
}

// serveFast runs the fast path on conn, whose handshake is done, and
// returns the connection for the registry server when a request needs it,
// or nil when the connection ended here.
func (p *Proxy) serveFast(conn *tls.Conn, tc *targetConn) net.Conn {
	fc := &fastConn{
		conn:       conn,
		br:         bufio.NewReaderSize(conn, fastHeaderBuffer),
		bw:         bufio.NewWriterSize(conn, fastHeaderBuffer),
		ctx:        connValues(context.Background(), tc),
		remoteAddr: conn.RemoteAddr().String(),
	}
	state := conn.ConnectionState()
	fc.tlsState = &state
	if !p.fast.add(fc) {
		conn.Close()
		return nil
	}
	defer p.fast.remove(fc)
	handoff, err := p.fastLoop(fc)
	if handoff {
		p.log.Debug("intercepted connection handed to the registry server",
			"target", tc.target, "served_before", fc.served)
		return fc.handoffConn()
	}
	if err != nil && !isClosedConn(err) {
		p.log.Debug("intercepted connection ended", "target", tc.target, "served", fc.served, "err", err)
	}
	conn.Close()
	return nil
}

// fastLoop serves requests on fc until one is for the registry server
// (handoff) or the connection ends (err, nil for a clean close).
func (p *Proxy) fastLoop(fc *fastConn) (handoff bool, err error) {
	for {
		if !p.fast.setIdle(fc, true) {
			return false, nil // shutting down
		}
		fc.awaitRequest()
		if _, err := fc.br.Peek(1); err != nil {
			return false, err
		}
		if !p.fast.setIdle(fc, false) {
			return false, nil
		}
		n, err := fc.peekHeader()
		if err != nil {
			return false, err
		}
		if n == 0 {
			return true, nil // too large for the fast path
		}
		var req http.Request
		if !fc.parse(n, &req) {
			return true, nil
		}
		fc.br.Discard(n)
		fc.served++
		p.fast.served.Add(1)
		if !p.serveFastRequest(fc, &req) {
			return false, nil
		}
	}
}

// awaitRequest bounds the wait for the next request by idleTimeout, as
// net/http does. The deadline is moved forward only once it is less than
// idleTimeout/2 away, not for every request: moving it takes the runtime's
// timer lock, and a keep-alive connection asks again and again. So an idle
// connection is closed after idleTimeout/2 to idleTimeout.
func (fc *fastConn) awaitRequest() {
	now := time.Now()
	if fc.deadline.Sub(now) < idleTimeout/2 || fc.headerDeadline {
		fc.setReadDeadline(now.Add(idleTimeout))
		fc.headerDeadline = false
	}
}

// setReadDeadline sets the connection's read deadline and remembers it.
func (fc *fastConn) setReadDeadline(t time.Time) {
	fc.conn.SetReadDeadline(t)
	fc.deadline = t
}

// peekHeader waits until br holds a whole header block and returns its
// length, or 0 when it does not fit in the buffer.
func (fc *fastConn) peekHeader() (int, error) {
	deadlineSet := false
	for {
		buf, _ := fc.br.Peek(fc.br.Buffered())
		if n := headerEnd(buf); n > 0 {
			return n, nil
		}
		if len(buf) == fc.br.Size() {
			return 0, nil
		}
		if !deadlineSet { // the rest of the header is late: bound it as net/http does
			fc.setReadDeadline(time.Now().Add(readHeaderTimeout))
			fc.headerDeadline = true
			deadlineSet = true
		}
		if _, err := fc.br.Peek(len(buf) + 1); err != nil {
			return 0, err
		}
	}
}

// headerEnd returns the length of the header block at the start of buf,
// through the empty line that ends it (CRLF or a bare LF, as net/http
// accepts), or 0 when the block is not complete.
func headerEnd(buf []byte) int {
	start := 0
	for {
		i := bytes.IndexByte(buf[start:], '\n')
		if i < 0 {
			return 0
		}
		line := buf[start : start+i]
		start += i + 1
		if len(line) == 0 || (len(line) == 1 && line[0] == '\r') {
			return start
		}
	}
}

// parse reads the request in br's first n bytes into req without
// consuming them, and reports whether the fast path serves it
// (parseFastRequest).
func (fc *fastConn) parse(n int, req *http.Request) bool {
	buf, _ := fc.br.Peek(n)
	if !parseFastRequest(buf, req) {
		return false // net/http reads it and answers it
	}
	req.RemoteAddr = fc.remoteAddr
	req.TLS = fc.tlsState
	return true
}

// plainHost reports whether h is a host[:port] of letters, digits and
// the punctuation of names and IP addresses: anything else goes to
// net/http, which decides whether it is a valid Host.
func plainHost(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '-', c == '_', c == ':', c == '[', c == ']':
		default:
			return false
		}
	}
	return true
}

// serveFastRequest runs the registry handler on req and reports whether
// the connection can carry another request.
func (p *Proxy) serveFastRequest(fc *fastConn, parsed *http.Request) (keepAlive bool) {
	ctx, cancel := context.WithCancel(fc.ctx)
	defer cancel()
	// The access log's reqInfo, given here so that it need not copy the
	// request again to add it.
	req := parsed.WithContext(context.WithValue(ctx, infoKey{}, &reqInfo{outcome: outcomePass}))
	w := &fc.resp
	w.reset(fc.bw, req)
	defer func() {
		if v := recover(); v != nil {
			keepAlive = false
			if v != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				p.log.Error("panic serving an intercepted request", "remote", fc.remoteAddr,
					"panic", fmt.Sprint(v), "stack", string(buf))
			}
		}
	}()
	p.mitmSrv.Handler.ServeHTTP(w, req)
	return w.finish()
}

// handoffConn is the connection for the registry server: the TLS
// connection itself, or one that first returns what the fast path read
// ahead.
func (fc *fastConn) handoffConn() net.Conn {
	fc.conn.SetReadDeadline(time.Time{})
	if fc.br.Buffered() == 0 {
		return fc.conn
	}
	return &readAheadConn{Conn: fc.conn, ahead: fc.br}
}

// readAheadConn returns the bytes the fast path read ahead, then reads
// the connection.
type readAheadConn struct {
	*tls.Conn
	ahead *bufio.Reader // nil once drained
}

func (c *readAheadConn) Read(b []byte) (int, error) {
	if c.ahead != nil {
		if c.ahead.Buffered() > 0 {
			return c.ahead.Read(b)
		}
		c.ahead = nil
	}
	return c.Conn.Read(b)
}

// isClosedConn reports whether err only says the connection ended.
func isClosedConn(err error) bool {
	var ne net.Error
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// fastConns tracks the connections on the fast path, for Shutdown: idle
// ones are closed at once, active ones once their response is written.
type fastConns struct {
	mu      sync.Mutex
	idle    map[*fastConn]bool
	closing bool
	wg      sync.WaitGroup
	served  atomic.Int64 // requests taken by the fast path, for tests
}

// add registers fc, or reports false during a shutdown.
func (f *fastConns) add(fc *fastConn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closing {
		return false
	}
	if f.idle == nil {
		f.idle = make(map[*fastConn]bool)
	}
	f.idle[fc] = false
	f.wg.Add(1)
	return true
}

func (f *fastConns) remove(fc *fastConn) {
	f.mu.Lock()
	delete(f.idle, fc)
	f.mu.Unlock()
	f.wg.Done()
}

// setIdle marks fc idle (waiting for a request) or active, and reports
// false when a shutdown began: the connection is to be closed.
func (f *fastConns) setIdle(fc *fastConn, idle bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.idle[fc] = idle
	return !f.closing
}

// shutdown closes the idle connections and waits for the active ones to
// end, or for ctx, after which it closes those too.
func (f *fastConns) shutdown(ctx context.Context) error {
	f.mu.Lock()
	f.closing = true
	for fc, idle := range f.idle {
		if idle {
			fc.conn.NetConn().Close()
		}
	}
	f.mu.Unlock()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		f.closeAll()
		return ctx.Err()
	}
}

// closeAll cuts every connection, active or not.
func (f *fastConns) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fc := range f.idle {
		fc.conn.NetConn().Close()
	}
}
