package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// This file holds the tunnel policy: which addresses regproxy may dial at
// all (forbiddenAddr), which CONNECT targets it tunnels (--tunnel,
// --tunnel-allow), how many tunnels one client may hold, and when an idle
// tunnel is closed. connect.go hands it the hijacked connections.

// thisNetwork is 0.0.0.0/8, "this host on this network" (RFC 1122,
// section 3.2.1.3): never a valid destination.
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// forbiddenAddr is the rule for every address regproxy dials on a client's
// behalf: tunnels, interceptions and the redirects a fill follows. It
// refuses, and says why:
//   - loopback (127.0.0.0/8, ::1): services that trust the proxy host;
//   - link-local (169.254.0.0/16, fe80::/10), home of cloud metadata
//     endpoints (169.254.169.254) and the credentials they hand out;
//   - unspecified (0.0.0.0/8, ::), which Linux connects to the host itself;
//   - the proxy's own listen address self or, when self is a wildcard,
//     self's port on any address of the host (hostAddr reports those): a
//     tunnel to itself loops. An invalid self (not serving yet) is skipped.
//
// An IPv4-mapped IPv6 address (::ffff:127.0.0.1) is judged as the IPv4
// address it carries, which is where the kernel connects it. Private
// ranges stay allowed: in-house registries live there. Addresses the
// operator chose (--resolve targets, --upstream-proxy) are not judged.
func forbiddenAddr(dst, self netip.AddrPort, hostAddr func(netip.Addr) bool) (reason string, bad bool) {
	ip := dst.Addr().Unmap().WithZone("")
	switch {
	case ip.IsLoopback():
		return "loopback address", true
	case ip.IsLinkLocalUnicast():
		return "link-local address (cloud metadata)", true
	case ip.IsUnspecified() || thisNetwork.Contains(ip):
		return "unspecified address", true
	case self.IsValid() && dst.Port() == self.Port() && isSelf(ip, self.Addr().Unmap(), hostAddr):
		return "regproxy's own listen address", true
	}
	return "", false
}

// isSelf reports whether ip is the listen IP, or any of the host's when the
// proxy listens on a wildcard address.
func isSelf(ip, listen netip.Addr, hostAddr func(netip.Addr) bool) bool {
	if listen.IsUnspecified() {
		return hostAddr(ip)
	}
	return ip == listen.WithZone("")
}

// hostHasAddr reports whether ip is assigned to one of the host's
// interfaces. It fails closed: if the interfaces cannot be read, every
// address counts as the host's (only dials to the proxy's port ask).
func hostHasAddr(ip netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if h, ok := netip.AddrFromSlice(n.IP); ok && h.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// refusedError is a dial that forbiddenAddr refused; a tunnel answers it
// with 403.
type refusedError struct{ addr, reason string }

func (e *refusedError) Error() string {
	return fmt.Sprintf("refused to dial %s: %s", e.addr, e.reason)
}

// Tunnel defaults, for the zero values of Config.
const (
	defaultTunnelIdle = 5 * time.Minute
	defaultTunnelMax  = 64
)

var (
	errTooManyTunnels = errors.New("too many tunnels from this client")
	errShuttingDown   = errors.New("regproxy is shutting down")
)

// tunnels runs raw CONNECT tunnels and tracks each of their connections,
// so that shutdown can cut them.
type tunnels struct {
	deny  bool       // tunnel only what allow lists
	allow *allowList // --tunnel-allow; consulted only when deny
	idle  time.Duration
	max   int // concurrent tunnels per client IP
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)

	ctx       context.Context // cancelled by close, which aborts dials in flight
	cancel    context.CancelFunc
	wg        sync.WaitGroup    // the goroutines of admitted tunnels
	mu        sync.Mutex        // protects perClient, open and closed
	perClient map[string]int    // client IP → tunnels open
	open      map[net.Conn]bool // both ends of every tunnel, for close
	closed    bool
}

func newTunnels(cfg Config, dial func(context.Context, string, string) (net.Conn, error)) (*tunnels, error) {
	allow, err := parseTunnelAllow(cfg.TunnelAllow)
	if err != nil {
		return nil, err
	}
	t := &tunnels{deny: cfg.TunnelDeny, allow: allow, idle: cfg.TunnelIdleTimeout, max: cfg.TunnelMaxPerClient,
		dial: dial, perClient: map[string]int{}, open: map[net.Conn]bool{}}
	if t.idle <= 0 {
		t.idle = defaultTunnelIdle
	}
	if t.max <= 0 {
		t.max = defaultTunnelMax
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t, nil
}

// CheckTunnelAllow validates --tunnel-allow entries ("host" or
// "host:port") the way New does.
func CheckTunnelAllow(entries []string) error {
	_, err := parseTunnelAllow(entries)
	return err
}

// parseTunnelAllow reads entries with the --registries syntax, naming a bad
// entry in words that fit this list.
func parseTunnelAllow(entries []string) (*allowList, error) {
	for _, e := range entries {
		if _, err := parseAllowList([]string{e}); err != nil {
			return nil, fmt.Errorf("tunnel allow-list entry %q: want host or host:port", e)
		}
	}
	return parseAllowList(entries)
}

// permits reports whether the policy lets target be tunnelled: always
// under --tunnel allow; under deny only when --tunnel-allow lists it (a
// host entry matches every port, as on --registries).
func (t *tunnels) permits(target string) bool {
	return !t.deny || t.allow.Intercepts(target)
}

// admit counts a new tunnel of the client at ip, unless it already holds
// max of them (a client, or a loop, cannot exhaust the host's sockets).
func (t *tunnels) admit(ip string, client net.Conn) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.closed:
		return errShuttingDown
	case t.perClient[ip] >= t.max:
		return errTooManyTunnels
	}
	t.perClient[ip]++
	t.open[client] = true
	t.wg.Add(1) // before closed is set, so before close's Wait
	return nil
}

// release ends what admit began.
func (t *tunnels) release(ip string, client net.Conn) {
	t.mu.Lock()
	if t.perClient[ip]--; t.perClient[ip] <= 0 {
		delete(t.perClient, ip)
	}
	delete(t.open, client)
	t.mu.Unlock()
	client.Close()
	t.wg.Done()
}

// track registers an upstream connection for close; false once closed.
func (t *tunnels) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.open[c] = true
	return true
}

func (t *tunnels) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.open, c)
	t.mu.Unlock()
}

// close refuses new tunnels, cuts the open ones and waits for their
// goroutines.
func (t *tunnels) close() {
	t.mu.Lock()
	t.closed = true
	for c := range t.open {
		c.Close()
	}
	t.mu.Unlock()
	t.cancel()
	t.wg.Wait()
}

// tunnel runs one CONNECT tunnel on a client connection regproxy has taken
// over (nothing has been answered yet):
//  1. admit the client under its cap (429 over it);
//  2. dial target through the guarded dialer (403 for a forbidden
//     address, 502 for an unreachable one);
//  3. answer 200;
//  4. relay bytes until the tunnel ends or idles, and log it as TUNNEL
//     with the bytes each way and how long it lasted.
func (p *Proxy) tunnel(r *http.Request, client net.Conn, target string) {
	start := time.Now()
	t, ip := p.tunnels, clientIP(r)
	if err := t.admit(ip, client); err != nil {
		p.refuseTunnel(r, client, target, refusalStatus(err), err.Error(), err)
		client.Close()
		return
	}
	defer t.release(ip, client)
	up, err := t.dial(t.ctx, "tcp", target)
	if err != nil {
		p.tunnelFailed(r, client, target, err, start)
		return
	}
	defer up.Close()
	if !t.track(up) {
		p.refuseTunnel(r, client, target, http.StatusServiceUnavailable, errShuttingDown.Error(), errShuttingDown)
		return
	}
	defer t.untrack(up)
	e := entry{host: target, outcome: outcomeTunnel, status: http.StatusOK}
	client.SetWriteDeadline(time.Now().Add(t.idle))
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err == nil {
		e.bytes, e.bytesIn = t.relay(client, up)
	}
	e.duration = time.Since(start)
	p.logEntry(r, e)
}

// refusalStatus is the status that answers an error of admit.
func refusalStatus(err error) int {
	if errors.Is(err, errShuttingDown) {
		return http.StatusServiceUnavailable
	}
	return http.StatusTooManyRequests
}

// tunnelFailed answers a failed dial: 403 if the guard refused the
// address, 502 otherwise. The cause goes to the log line, not to the
// client.
func (p *Proxy) tunnelFailed(r *http.Request, client net.Conn, target string, err error, start time.Time) {
	var refused *refusedError
	if errors.As(err, &refused) {
		// The client learns why, not the address its target resolved to.
		p.refuseTunnel(r, client, target, http.StatusForbidden, refused.reason, refused)
		return
	}
	answer(client, http.StatusBadGateway, "regproxy: cannot reach "+target+"\n")
	p.logEntry(r, entry{host: target, outcome: outcomeError, status: http.StatusBadGateway,
		duration: time.Since(start), err: err})
}

// refuseTunnel answers a CONNECT that will not be tunnelled with status and
// why, and logs it as DENIED, with the full reason on a line of its own.
func (p *Proxy) refuseTunnel(r *http.Request, client net.Conn, target string, status int, why string, reason error) {
	p.log.Warn("tunnel refused", "host", target, "client", clientIP(r), "reason", reason.Error())
	p.logLine(r, target, "", "", outcomeDenied, status, 0, 0)
	answer(client, status, "regproxy: CONNECT "+target+" refused: "+why+"\n")
}

// answer writes a short plain-text response on a taken-over connection.
// The caller closes it.
func answer(client net.Conn, status int, msg string) {
	client.SetWriteDeadline(time.Now().Add(10 * time.Second))
	resp := &http.Response{StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, Close: true,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
		Body:          io.NopCloser(strings.NewReader(msg)),
		ContentLength: int64(len(msg))}
	resp.Write(client)
}

// clientIP is the address a client connects from, without its port.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// relay copies bytes both ways until both directions have ended, either
// fails, or the tunnel idles (no byte either way for t.idle), and returns
// how many bytes went each way. When one direction ends, it half-closes
// the other side's write end, since a client may still read a response
// after sending its last byte. The caller closes both connections
// afterwards.
func (t *tunnels) relay(client, up net.Conn) (toClient, fromClient int64) {
	f := &flow{idle: t.idle}
	f.touch()
	cut := func() { client.Close(); up.Close() }
	done := make(chan struct{})
	t.wg.Add(1) // the caller's admit holds the count above zero
	go func() {
		defer t.wg.Done()
		defer close(done)
		var ok bool
		if fromClient, ok = f.copy(up, client); !ok {
			cut()
		}
	}()
	toClient, ok := f.copy(client, up)
	if !ok {
		cut()
	}
	<-done // fromClient is set
	return toClient, fromClient
}

// flow is the shared clock of a tunnel's two directions: a tunnel is idle
// only when neither has moved a byte for idle.
type flow struct {
	idle time.Duration
	last atomic.Int64 // UnixNano of the last byte moved either way
}

func (f *flow) touch() { f.last.Store(time.Now().UnixNano()) }

// deadline is when the tunnel turns idle unless a byte moves first.
func (f *flow) deadline() time.Time { return time.Unix(0, f.last.Load()).Add(f.idle) }

// copy moves bytes from src to dst and returns how many it wrote. At src's
// EOF it half-closes dst and reports true; on an error, or when the tunnel
// idles, it reports false and the caller cuts both ends.
func (f *flow) copy(dst, src net.Conn) (int64, bool) {
	buf := make([]byte, 32<<10)
	var written int64
	for {
		src.SetReadDeadline(f.deadline())
		n, err := src.Read(buf)
		if n > 0 {
			f.touch()
			// A peer that stops reading for idle stalls the tunnel as
			// surely as one that stops sending.
			dst.SetWriteDeadline(time.Now().Add(f.idle))
			m, werr := dst.Write(buf[:n])
			written += int64(m)
			if werr != nil {
				return written, false
			}
			f.touch()
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return written, closeWrite(dst)
		case errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(f.deadline()):
			// The other direction moved a byte meanwhile: not idle yet.
		default:
			return written, false
		}
	}
}

// closeWrite half-closes c; false if c cannot be half-closed.
func closeWrite(c net.Conn) bool {
	hc, ok := c.(interface{ CloseWrite() error })
	return ok && hc.CloseWrite() == nil
}
