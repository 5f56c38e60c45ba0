package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"

	"github.com/elazarl/goproxy"
)

// This is the only file that knows goproxy. goproxy parses and routes
// CONNECTs. Raw tunnels are run by tunnel.go; intercepted connections are
// handed to one long-lived net/http Server (mitmSrv), so that the cache is
// a plain http.Handler with net/http's framing, limits and timeouts.

// newFrontServer serves the proxy port.
func (p *Proxy) newFrontServer() *http.Server {
	gp := goproxy.NewProxyHttpServer()
	// goproxy's default dialer honours HTTPS_PROXY; ours never does and
	// applies --resolve and the address guard instead. (regproxy runs its
	// tunnels itself; this covers any ConnectAccept all the same.)
	gp.ConnectDial = nil
	gp.ConnectDialWithReq = func(req *http.Request, network, addr string) (net.Conn, error) {
		return p.dial.DialContext(req.Context(), network, addr)
	}
	gp.Tr = p.transport
	gp.Logger = log.New(io.Discard, "", 0)
	gp.NonproxyHandler = p.accessLog(http.HandlerFunc(p.servePlain))
	gp.OnRequest().HandleConnectFunc(p.handleConnect)
	gp.OnRequest().DoFunc(func(r *http.Request, _ *goproxy.ProxyCtx) (*http.Request, *http.Response) {
		return r, p.refusePlainProxy(r)
	})
	srv := &http.Server{
		Handler:           gp,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		// The guard refuses tunnels to the proxy's own address, which
		// is known only once it serves.
		BaseContext: func(ln net.Listener) context.Context {
			p.dial.serving(ln.Addr())
			return context.Background()
		},
	}
	// Tunnels are hijacked connections, which Shutdown does not track.
	srv.RegisterOnShutdown(p.tunnels.close)
	return srv
}

// refusePlainProxy answers an absolute-URI request, which would make
// regproxy an open forward proxy: 403, or 407 to a client that --htpasswd
// does not let in, which learns nothing of the policy.
func (p *Proxy) refusePlainProxy(r *http.Request) *http.Response {
	r, ok := p.authenticate(r)
	if !ok {
		p.logLine(r, r.URL.Host, "", "", "DENIED", http.StatusProxyAuthRequired, 0, 0)
		return challenge(r)
	}
	p.logLine(r, r.URL.Host, "", "", "DENIED", http.StatusForbidden, 0, 0)
	return goproxy.NewResponse(r, "text/plain", http.StatusForbidden,
		"regproxy forwards only CONNECT; plain HTTP proxying is refused\n")
}

// handleConnect decides each CONNECT: ask for credentials under
// --htpasswd, reject a malformed target, intercept an allow-listed one,
// tunnel the rest as the tunnel policy permits.
func (p *Proxy) handleConnect(target string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	// Credentials come first: a client without them learns nothing of
	// the target or the policy, and reaches neither a tunnel nor the
	// registry server. ctx.Req carries the user from here on.
	r, ok := p.authenticate(ctx.Req)
	if !ok {
		ctx.Resp = challenge(ctx.Req)
		p.logLine(ctx.Req, target, "", "", "DENIED", http.StatusProxyAuthRequired, 0, 0)
		return goproxy.RejectConnect, target
	}
	ctx.Req = r
	host, _, err := splitTarget(target)
	if err != nil {
		// goproxy would dial ":80" for a target without a port and answer
		// dial errors with a 502 carrying the raw error: refuse it first.
		ctx.Resp = goproxy.NewResponse(ctx.Req, "text/plain", http.StatusBadRequest, err.Error()+"\n")
		p.logLine(ctx.Req, target, "", "", "DENIED", http.StatusBadRequest, 0, 0)
		return goproxy.RejectConnect, target
	}
	if !p.allow.Intercepts(target) {
		return p.tunnelAction(target, ctx)
	}
	return &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: func(_ *http.Request, client net.Conn, _ *goproxy.ProxyCtx) {
		p.intercept(client, target, host, userOf(r))
	}}, target
}

// tunnelAction refuses a target that --tunnel deny leaves out, before
// anything is dialled, and otherwise takes the connection over: regproxy
// runs its tunnels itself (tunnel.go), to guard the address it dials, cap
// tunnels per client and close idle ones, none of which goproxy's
// ConnectAccept does.
func (p *Proxy) tunnelAction(target string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	if !p.tunnels.permits(target) {
		ctx.Resp = goproxy.NewResponse(ctx.Req, "text/plain", http.StatusForbidden,
			"regproxy: CONNECT "+target+" refused: not on the tunnel allow-list\n")
		p.logLine(ctx.Req, target, "", "", "DENIED", http.StatusForbidden, 0, 0)
		return goproxy.RejectConnect, target
	}
	// ctx.Req, not the request goproxy passes, carries the user.
	return &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: func(_ *http.Request, client net.Conn, _ *goproxy.ProxyCtx) {
		p.tunnel(ctx.Req, client, target)
	}}, target
}

// intercept answers the CONNECT, wraps the connection in TLS with a leaf
// for host, serves its manifest requests on the fast path (fastpath.go),
// and hands it to the registry server at its first other request. This is
// the registry server's only source of connections, and handleConnect
// calls it only for a client it let in (user, under --htpasswd).
//
// goproxy's ConnectHijack drops bytes a client sent together with its
// CONNECT; Go clients and curl wait for the 200 first, so none are lost.
func (p *Proxy) intercept(client net.Conn, target, host, user string) {
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		client.Close()
		return
	}
	// Raw system calls on the client's socket: see quietconn_linux.go.
	tc := &targetConn{Conn: newQuietConn(client), target: target, host: host, user: user}
	conn := tls.Server(tc, p.tlsConfig)
	if err := p.mitm.handshake(conn); err != nil {
		p.log.Debug("intercepted connection dropped before its first request", "target", target, "err", err)
		conn.Close()
		return
	}
	rest := net.Conn(conn)
	if !p.noFastPath {
		if rest = p.serveFast(conn, tc); rest == nil {
			return
		}
	}
	if err := p.mitm.deliver(rest); err != nil {
		p.log.Debug("intercepted connection dropped", "target", target, "err", err)
		rest.Close()
	}
}

// targetConn is an intercepted client connection that remembers its
// CONNECT target, so that requests on it go to that target and nowhere
// else, whatever their Host header says.
type targetConn struct {
	net.Conn
	target string // host:port as in the CONNECT
	host   string // target without the port, for the leaf certificate
	user   string // who authenticated the CONNECT; "" without --htpasswd
}

func (p *Proxy) newTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		// Full-size records from the first byte. Dynamic sizing, meant for
		// browsers on slow links, starts a connection with records of one
		// TCP segment: a manifest of a few KiB, often all a connection
		// carries, went out in several records, a write(2) each.
		DynamicRecordSizingDisabled: true,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			tc, ok := hello.Conn.(*targetConn)
			if !ok {
				return nil, errors.New("intercepted connection without target")
			}
			// The leaf names the CONNECT host, not the SNI: regproxy only
			// impersonates hosts on its allow-list.
			return p.ca.Leaf(tc.host)
		},
	}
}

type targetKey struct{}

// newMITMServer serves the registry API on intercepted connections.
func (p *Proxy) newMITMServer() *http.Server {
	return &http.Server{
		Handler:           p.accessLog(http.HandlerFunc(p.serveRegistry)),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if ra, ok := c.(*readAheadConn); ok {
				c = ra.Conn
			}
			if tc, ok := c.(*tls.Conn); ok {
				if t, ok := tc.NetConn().(*targetConn); ok {
					return connValues(ctx, t)
				}
			}
			return ctx
		},
	}
}

// connValues adds what requests on an intercepted connection need to know
// of it to ctx: its target, its user, its credential cache and its tag
// memo.
func connValues(ctx context.Context, t *targetConn) context.Context {
	return withTagMemo(withCredCache(withUser(context.WithValue(ctx, targetKey{}, t.target), t.user)))
}

// targetOf returns the CONNECT target of an intercepted request.
func targetOf(r *http.Request) string {
	t, _ := r.Context().Value(targetKey{}).(string)
	return t
}

// connListener is a net.Listener fed with intercepted connections, each
// once its TLS handshake is done.
type connListener struct {
	conns chan net.Conn
	// ctx ends when the listener is closed: handshakes and deliveries in
	// progress then give up.
	ctx    context.Context
	cancel context.CancelFunc
}

func newConnListener() *connListener {
	ctx, cancel := context.WithCancel(context.Background())
	return &connListener{conns: make(chan net.Conn), ctx: ctx, cancel: cancel}
}

// handshake completes c's TLS handshake. It fails once the listener is
// closed, and after readHeaderTimeout, the bound the registry server would
// put on the handshake.
//
// The handshake runs in the CONNECT's goroutine, which no server tracks
// once goproxy hijacked the connection, and not in the registry server:
// there a client that never finished its handshake would count as a new
// connection, which http.Server.Shutdown waits five seconds for. Closing
// the listener interrupts the handshake instead.
func (l *connListener) handshake(c *tls.Conn) error {
	ctx, cancel := context.WithTimeout(l.ctx, readHeaderTimeout)
	defer cancel()
	return c.HandshakeContext(ctx)
}

// deliver hands c to Accept. It fails once the listener is closed, and
// after readHeaderTimeout.
func (l *connListener) deliver(c net.Conn) error {
	ctx, cancel := context.WithTimeout(l.ctx, readHeaderTimeout)
	defer cancel()
	select {
	case l.conns <- c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.cancel()
	return nil
}

func (l *connListener) Addr() net.Addr { return dummyAddr{} }

type dummyAddr struct{}

func (dummyAddr) Network() string { return "intercepted" }
func (dummyAddr) String() string  { return "intercepted" }
