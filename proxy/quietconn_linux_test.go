package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/regproxy/regproxy/internal/testpki"
)

// quietTestTimeout bounds every wait in these tests: far above what a
// loopback operation takes, so that reaching it means a hang, not a slow
// machine.
const quietTestTimeout = 10 * time.Second

// quietPair returns a loopback TCP connection wrapped by newQuietConn, on
// the accepting side as in production (connect.go wraps the client's
// connection), and the dialling end as its peer. Both are closed when the
// test ends.
func quietPair(t *testing.T) (*quietConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	peer, err := net.DialTimeout("tcp", ln.Addr().String(), quietTestTimeout)
	if err != nil {
		ln.Close() // ends the Accept
		<-ch
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	a := <-ch
	if a.err != nil {
		t.Fatal(a.err)
	}
	t.Cleanup(func() { a.c.Close() })
	q, ok := newQuietConn(a.c).(*quietConn)
	if !ok {
		t.Fatalf("newQuietConn(%T) is not a *quietConn", a.c)
	}
	return q, peer.(*net.TCPConn)
}

// tcpOf is the *net.TCPConn under q, for the socket options and half
// closes that net.Conn does not offer.
func tcpOf(t *testing.T, q *quietConn) *net.TCPConn {
	t.Helper()
	tc, ok := q.Conn.(*net.TCPConn)
	if !ok {
		t.Fatalf("quietConn wraps %T, want *net.TCPConn", q.Conn)
	}
	return tc
}

// smallBuffers shrinks the socket buffers of both ends, which also turns
// off the kernel's autotuning, so that a few hundred KiB fill them: a
// write larger than that, either way, must wait for the other end to read.
func smallBuffers(t *testing.T, q *quietConn, peer *net.TCPConn) {
	t.Helper()
	for _, c := range []*net.TCPConn{tcpOf(t, q), peer} {
		if err := c.SetWriteBuffer(64 << 10); err != nil {
			t.Fatal(err)
		}
		if err := c.SetReadBuffer(64 << 10); err != nil {
			t.Fatal(err)
		}
	}
}

// randomBytes returns n bytes that differ from position to position, so
// that a lost, repeated or reordered block shows in a comparison.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	var seed [32]byte
	seed[0] = byte(n)
	rand.NewChaCha8(seed).Read(b)
	return b
}

// readAllBounded is io.ReadAll with a bound on the number of reads, so
// that a Read returning 0, nil for ever fails the test instead of hanging
// it.
func readAllBounded(r io.Reader) ([]byte, error) {
	var got []byte
	buf := make([]byte, 64<<10)
	for i := 0; i < 100000; i++ {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
	}
	return got, errors.New("no io.EOF after 100000 reads")
}

// TestQuietConnWrapsOnlyTCP proves newQuietConn wraps a TCP connection,
// keeping it for addresses, deadlines and Close, and hands any other
// connection back as it is, since raw system calls need a socket.
func TestQuietConnWrapsOnlyTCP(t *testing.T) {
	q, _ := quietPair(t) // quietPair itself fails unless the TCP end is wrapped
	if _, ok := q.Conn.(*net.TCPConn); !ok || q.raw == nil {
		t.Errorf("quietConn{Conn: %T, raw: %v}, want the *net.TCPConn and its RawConn", q.Conn, q.raw)
	}

	pipeEnd, other := net.Pipe()
	defer pipeEnd.Close()
	defer other.Close()
	if got := newQuietConn(pipeEnd); got != pipeEnd {
		t.Errorf("newQuietConn(net.Pipe end) = %T %p, want the same connection %p", got, got, pipeEnd)
	}
}

// TestQuietConnRoundTrip proves bytes written on either end arrive on the
// other whole and in order, for sizes from one byte to several socket
// buffers, and that a quietConn reading to the end stops at the peer's
// close (readAllBounded, like io.ReadAll, treats only io.EOF as the end).
func TestQuietConnRoundTrip(t *testing.T) {
	tests := []struct {
		name     string
		size     int
		fromPeer bool // the peer writes and the quietConn reads, else the reverse
	}{
		{"quiet writes one byte", 1, false},
		{"quiet reads one byte", 1, true},
		{"quiet writes 1000 bytes", 1000, false},
		{"quiet reads 1000 bytes", 1000, true},
		{"quiet writes 4 MiB", 4 << 20, false},
		{"quiet reads 4 MiB", 4 << 20, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, peer := quietPair(t)
			smallBuffers(t, q, peer) // so that the 4 MiB cases wait for readiness on both ends
			q.SetDeadline(time.Now().Add(quietTestTimeout))
			peer.SetDeadline(time.Now().Add(quietTestTimeout))
			var (
				w     io.Writer = q
				r     io.Reader = peer
				close           = tcpOf(t, q).CloseWrite
			)
			if tt.fromPeer {
				w, r, close = peer, q, peer.CloseWrite
			}
			data := randomBytes(tt.size)
			type result struct {
				n   int
				err error
			}
			wrote := make(chan result, 1)
			go func() {
				n, err := w.Write(data)
				if err == nil {
					err = close() // the reader's end of data
				}
				wrote <- result{n, err}
			}()
			got, err := readAllBounded(r)
			res := <-wrote
			if res.err != nil || res.n != len(data) {
				t.Fatalf("Write = %d, %v; want %d, nil", res.n, res.err, len(data))
			}
			if err != nil {
				t.Fatalf("reading: %v", err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("read %d bytes that differ from the %d written", len(got), len(data))
			}
		})
	}
}

// TestQuietConnWriteWaitsForSlowReader proves a Write much larger than
// the socket buffers waits for the peer to make room (the EAGAIN path)
// instead of returning early, and delivers every byte in order.
func TestQuietConnWriteWaitsForSlowReader(t *testing.T) {
	q, peer := quietPair(t)
	smallBuffers(t, q, peer)
	q.SetDeadline(time.Now().Add(quietTestTimeout))
	peer.SetDeadline(time.Now().Add(quietTestTimeout))
	data := randomBytes(8 << 20)

	type result struct {
		started time.Time // when the peer began to read
		sum     [sha256.Size]byte
		n       int64
		err     error
	}
	done := make(chan result, 1)
	go func() {
		// The pause lets the Write fill both buffers first; reading small
		// pieces with pauses then keeps it waiting for room again and again.
		time.Sleep(100 * time.Millisecond)
		res := result{started: time.Now()}
		h := sha256.New()
		buf := make([]byte, 32<<10)
		for i := 0; ; i++ {
			n, err := peer.Read(buf)
			h.Write(buf[:n])
			res.n += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				res.err = err
				break
			}
			if i%32 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		h.Sum(res.sum[:0])
		done <- res
	}()

	n, err := q.Write(data)
	wrote := time.Now()
	if cerr := tcpOf(t, q).CloseWrite(); cerr != nil && err == nil {
		err = cerr
	}
	res := <-done
	if err != nil || n != len(data) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(data))
	}
	if res.err != nil {
		t.Fatalf("peer reading: %v", res.err)
	}
	if !wrote.After(res.started) {
		// 8 MiB cannot fit in 64 KiB buffers: a Write that ended before
		// the peer read anything did not write it all.
		t.Errorf("Write returned at %v, before the peer began to read at %v", wrote, res.started)
	}
	if res.n != int64(len(data)) || res.sum != sha256.Sum256(data) {
		t.Errorf("peer read %d bytes with sha256 %x, want %d with %x", res.n, res.sum, len(data), sha256.Sum256(data))
	}
}

// TestQuietConnReadEOFAfterPeerClose proves a quietConn delivers what the
// peer sent before closing, then reports exactly io.EOF, as often as it
// is asked: callers such as bufio and net/http compare with io.EOF.
func TestQuietConnReadEOFAfterPeerClose(t *testing.T) {
	tests := []struct {
		name string
		sent []byte
	}{
		{"nothing sent", nil},
		{"a few bytes", []byte("last words")},
		{"more than one read takes", randomBytes(300 << 10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, peer := quietPair(t)
			q.SetReadDeadline(time.Now().Add(quietTestTimeout))
			sent := make(chan error, 1)
			go func() {
				_, err := peer.Write(tt.sent)
				if cerr := peer.Close(); err == nil {
					err = cerr
				}
				sent <- err
			}()
			var got []byte
			buf := make([]byte, 64<<10)
			var err error
			for i := 0; i < 10000 && err == nil; i++ { // bounded: 300 KiB takes far fewer reads
				var n int
				n, err = q.Read(buf)
				if n > 0 && err != nil {
					t.Errorf("Read = %d, %v: data and an error together", n, err)
				}
				got = append(got, buf[:n]...)
			}
			if serr := <-sent; serr != nil {
				t.Fatalf("peer: %v", serr)
			}
			if err != io.EOF {
				t.Fatalf("Read ended with %v, want io.EOF itself", err)
			}
			if !bytes.Equal(got, tt.sent) {
				t.Errorf("read %d bytes before EOF that differ from the %d sent", len(got), len(tt.sent))
			}
			if n, err := q.Read(buf); n != 0 || err != io.EOF {
				t.Errorf("Read after EOF = %d, %v; want 0, io.EOF again", n, err)
			}
		})
	}
}

// assertTimeout fails unless err is the error net.Conn returns past a
// deadline.
func assertTimeout(t *testing.T, op string, err error) {
	t.Helper()
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("%s error = %v, want os.ErrDeadlineExceeded and a net.Error whose Timeout() is true", op, err)
	}
}

// TestQuietConnReadDeadline proves a read deadline ends a Read with the
// timeout error net.Conn gives, without taking the waiting bytes, and
// that clearing it lets a later Read wait for data and succeed.
func TestQuietConnReadDeadline(t *testing.T) {
	tests := []struct {
		name        string
		deadline    time.Duration // from now
		dataWaiting bool          // the peer sent bytes before the Read
	}{
		{"deadline already past", -time.Second, false},
		{"deadline passes while waiting", 50 * time.Millisecond, false},
		{"deadline past with data waiting", -time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, peer := quietPair(t)
			if tt.dataWaiting {
				if _, err := peer.Write([]byte("early")); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(tt.deadline)
			q.SetReadDeadline(deadline)
			buf := make([]byte, 16)
			n, err := q.Read(buf)
			returned := time.Now()
			if n != 0 {
				t.Errorf("Read past the deadline = %d bytes, want 0", n)
			}
			assertTimeout(t, "Read", err)
			if returned.Before(deadline) {
				t.Errorf("Read returned %v before its deadline", deadline.Sub(returned))
			}
			if late := returned.Sub(deadline); tt.deadline > 0 && late > 5*time.Second {
				t.Errorf("Read returned %v after its deadline", late)
			}

			q.SetReadDeadline(time.Time{})
			// A safety net, not part of the check: unblock the Read
			// should clearing the deadline have left it stuck.
			unstick := time.AfterFunc(quietTestTimeout, func() { q.SetReadDeadline(time.Now()) })
			defer unstick.Stop()
			want := "late"
			if tt.dataWaiting {
				want = "early" // still there: the timed-out Read took nothing
			} else {
				go func() {
					time.Sleep(20 * time.Millisecond) // so that the Read waits with no deadline
					peer.Write([]byte(want))
				}()
			}
			got, err := io.ReadFull(q, buf[:len(want)])
			if err != nil || string(buf[:got]) != want {
				t.Errorf("Read after clearing the deadline = %q, %v; want %q, nil", buf[:got], err, want)
			}
		})
	}
}

// TestQuietConnWriteDeadline proves a write deadline ends a Write blocked
// on a peer that does not read with the timeout error net.Conn gives, and
// a count that is exactly the bytes the peer can still read.
func TestQuietConnWriteDeadline(t *testing.T) {
	tests := []struct {
		name     string
		deadline time.Duration // from now
		wantSome bool          // part of the write fits before the deadline
	}{
		{"deadline already past", -time.Second, false},
		{"deadline passes mid-write", 100 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, peer := quietPair(t)
			smallBuffers(t, q, peer)
			data := randomBytes(16 << 20) // far more than the buffers hold
			q.SetWriteDeadline(time.Now().Add(tt.deadline))
			start := time.Now()
			n, err := q.Write(data)
			if elapsed := time.Since(start); elapsed > 5*time.Second {
				t.Errorf("Write took %v past a deadline of %v", elapsed, tt.deadline)
			}
			assertTimeout(t, "Write", err)
			if n < 0 || n >= len(data) {
				t.Fatalf("Write past the deadline = %d bytes, want 0 <= n < %d", n, len(data))
			}
			if tt.wantSome && n == 0 {
				t.Errorf("Write = 0 bytes: empty buffers take some before any wait")
			}
			if !tt.wantSome && n != 0 {
				t.Errorf("Write = %d bytes past a deadline already gone, want 0", n)
			}

			// What the peer receives up to the end of the stream is what n
			// says was written: no more, no less.
			if err := tcpOf(t, q).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			peer.SetReadDeadline(time.Now().Add(quietTestTimeout))
			got, err := io.ReadAll(peer)
			if err != nil {
				t.Fatalf("peer reading: %v", err)
			}
			if !bytes.Equal(got, data[:n]) {
				t.Errorf("peer read %d bytes, want the %d Write reported, in order", len(got), n)
			}
		})
	}
}

// TestQuietConnCloseUnblocksWaiters proves Close from another goroutine
// ends a Read or Write that waits for readiness, with net.ErrClosed, as
// Shutdown relies on for idle intercepted connections.
func TestQuietConnCloseUnblocksWaiters(t *testing.T) {
	big := randomBytes(16 << 20) // made here, so that the goroutine starts its Write at once
	tests := []struct {
		name string
		op   func(q *quietConn) (int, error)
	}{
		{"Read waiting for data", func(q *quietConn) (int, error) {
			return q.Read(make([]byte, 16))
		}},
		{"Write waiting for room", func(q *quietConn) (int, error) {
			return q.Write(big) // the peer never reads
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, peer := quietPair(t)
			smallBuffers(t, q, peer)
			type result struct {
				n   int
				err error
			}
			done := make(chan result, 1)
			go func() {
				n, err := tt.op(q)
				done <- result{n, err}
			}()
			select {
			case res := <-done:
				t.Fatalf("returned %d, %v before Close: it must wait", res.n, res.err)
			case <-time.After(50 * time.Millisecond):
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case res := <-done:
				if !errors.Is(res.err, net.ErrClosed) {
					t.Errorf("after Close: %d, %v; want net.ErrClosed", res.n, res.err)
				}
			case <-time.After(quietTestTimeout):
				peer.Close() // lets the goroutine end before the test does
				<-done
				t.Fatalf("still blocked %v after Close", quietTestTimeout)
			}
		})
	}
}

// TestQuietConnZeroLength proves an empty Read or Write returns 0, nil at
// once, as net.Conn does, without consuming data that waits (rawIO would
// fault taking the address of an empty slice's first byte).
func TestQuietConnZeroLength(t *testing.T) {
	tests := []struct {
		name string
		op   func(q *quietConn) (int, error)
	}{
		{"Read nil", func(q *quietConn) (int, error) { return q.Read(nil) }},
		{"Read empty slice", func(q *quietConn) (int, error) { return q.Read(make([]byte, 0, 8)) }},
		{"Write nil", func(q *quietConn) (int, error) { return q.Write(nil) }},
		{"Write empty slice", func(q *quietConn) (int, error) { return q.Write([]byte{}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, peer := quietPair(t)
			if _, err := peer.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			q.SetDeadline(time.Now().Add(quietTestTimeout)) // a wait would end here, and fail
			if n, err := tt.op(q); n != 0 || err != nil {
				t.Errorf("= %d, %v; want 0, nil", n, err)
			}
			buf := make([]byte, 1)
			if n, err := q.Read(buf); n != 1 || err != nil || buf[0] != 'x' {
				t.Errorf("next Read = %d %q, %v; want the waiting \"x\"", n, buf[:n], err)
			}
		})
	}
}

// TestQuietConnPeerReset proves a connection the peer reset fails a Read
// or Write with the *net.OpError net.Conn returns, whose errno is
// ECONNRESET or EPIPE (which one depends on when the RST is seen), so
// that callers that test for those still recognise it.
func TestQuietConnPeerReset(t *testing.T) {
	tests := []struct {
		op string
		do func(q *quietConn) error
	}{
		{"read", func(q *quietConn) error {
			_, err := q.Read(make([]byte, 16))
			return err
		}},
		{"write", func(q *quietConn) error {
			// The first writes may land before the RST does: write until
			// one fails, a bounded number of times.
			for i := 0; i < 1000; i++ {
				if _, err := q.Write(make([]byte, 1024)); err != nil {
					return err
				}
				time.Sleep(time.Millisecond)
			}
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			q, peer := quietPair(t)
			if err := peer.SetLinger(0); err != nil { // Close sends RST, not FIN
				t.Fatal(err)
			}
			if err := peer.Close(); err != nil {
				t.Fatal(err)
			}
			q.SetDeadline(time.Now().Add(quietTestTimeout))
			err := tt.do(q)
			var op *net.OpError
			if !errors.As(err, &op) {
				t.Fatalf("error = %#v, want a *net.OpError", err)
			}
			if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
				t.Errorf("error = %v, want ECONNRESET or EPIPE", err)
			}
			var se *os.SyscallError
			if !errors.As(err, &se) || se.Syscall != tt.op {
				t.Errorf("error = %v, want an *os.SyscallError for %q", err, tt.op)
			}
			if op.Op != tt.op || op.Net != "tcp" || op.Source != q.LocalAddr() || op.Addr != q.RemoteAddr() {
				t.Errorf("OpError{Op: %q, Net: %q, Source: %v, Addr: %v}, want {%q, \"tcp\", %v, %v} as net.Conn reports",
					op.Op, op.Net, op.Source, op.Addr, tt.op, q.LocalAddr(), q.RemoteAddr())
			}
		})
	}
}

// TestQuietConnTLS proves crypto/tls runs over a quietConn on either side
// of the handshake, and carries a request and a response larger than the
// socket buffers both ways, as the intercepting proxy does with clients.
func TestQuietConnTLS(t *testing.T) {
	pki, err := testpki.New("quietConn test CA", []string{"registry.test"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		quietServer bool // the quietConn is the TLS server's end, else the client's
	}{
		{"quietConn under tls.Server", true},
		{"quietConn under tls.Client", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, peer := quietPair(t)
			smallBuffers(t, q, peer)
			q.SetDeadline(time.Now().Add(quietTestTimeout))
			peer.SetDeadline(time.Now().Add(quietTestTimeout))
			var serverRaw, clientRaw net.Conn = q, peer
			if !tt.quietServer {
				serverRaw, clientRaw = peer, q
			}
			srv := tls.Server(serverRaw, &tls.Config{Certificates: []tls.Certificate{pki.Server}})
			cli := tls.Client(clientRaw, &tls.Config{RootCAs: pki.Pool, ServerName: "registry.test"})
			defer srv.Close()
			defer cli.Close()

			reqBody, respBody := randomBytes(300<<10), randomBytes(2<<20)
			served := make(chan error, 1)
			go func() {
				req, err := http.ReadRequest(bufio.NewReader(srv))
				if err != nil {
					served <- err
					return
				}
				got, err := io.ReadAll(req.Body)
				if err == nil && !bytes.Equal(got, reqBody) {
					err = errors.New("the server read a request body that differs from the one sent")
				}
				if err != nil {
					served <- err
					return
				}
				resp := &http.Response{StatusCode: http.StatusOK, ProtoMajor: 1, ProtoMinor: 1,
					ContentLength: int64(len(respBody)), Body: io.NopCloser(bytes.NewReader(respBody))}
				served <- resp.Write(srv)
			}()

			req, err := http.NewRequest(http.MethodPut, "https://registry.test/v2/x/blobs/uploads/1", bytes.NewReader(reqBody))
			if err != nil {
				t.Fatal(err)
			}
			if err := req.Write(cli); err != nil {
				t.Fatalf("client writing the request: %v", err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(cli), req)
			if err != nil {
				t.Fatalf("client reading the response: %v (server: %v)", err, <-served)
			}
			got, err := io.ReadAll(resp.Body)
			if serr := <-served; serr != nil {
				t.Fatalf("server: %v", serr)
			}
			if err != nil || !bytes.Equal(got, respBody) {
				t.Errorf("client read %d response bytes, %v; want the %d sent", len(got), err, len(respBody))
			}
			if !cli.ConnectionState().HandshakeComplete || !srv.ConnectionState().HandshakeComplete {
				t.Error("handshake not complete on both ends")
			}
		})
	}
}
