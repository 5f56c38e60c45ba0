package proxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// dialer dials upstream hosts, applying --resolve overrides and, when
// configured, going through an upstream HTTP proxy. Tunnels, interceptions
// and the redirects a fill follows all share it, so all obey the same rules,
// the address guard (forbiddenAddr) among them.
type dialer struct {
	resolve map[string]string // "host:port" → "ip:port"
	via     *url.URL          // upstream proxy; nil means direct
	// direct dials the addresses the operator chose: --resolve targets and
	// the upstream proxy. They are exempt from the guard, deliberately: a
	// registry on the proxy host itself is reached by --resolve to loopback.
	direct net.Dialer
	// guarded dials every other address. Its Control runs after DNS
	// resolution, just before connect(2), for each address tried: a name
	// that resolves to loopback is caught, and nothing is sent to a
	// refused address.
	guarded net.Dialer

	mu     sync.Mutex                       // serializes serving's updates of selves
	selves atomic.Pointer[[]netip.AddrPort] // the addresses regproxy listens on (proxy and mirror ports); nil until it serves
}

func newDialer(resolve map[string]string, via *url.URL) *dialer {
	d := &dialer{resolve: resolve, via: via}
	d.direct = net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	d.guarded = d.direct
	d.guarded.Control = d.control
	return d
}

// serving records an address regproxy listens on (the proxy port, the
// mirror port), for the guard's loop clause.
func (d *dialer) serving(addr net.Addr) {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var selves []netip.AddrPort
	if old := d.selves.Load(); old != nil {
		selves = append(selves, *old...)
	}
	selves = append(selves, tcp.AddrPort())
	d.selves.Store(&selves)
}

// DialContext dials addr, or the address --resolve maps it to, directly
// or through a CONNECT tunnel of the upstream proxy.
func (d *dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	to, chosen := d.resolve[strings.ToLower(addr)]
	if chosen {
		addr = to
	}
	switch {
	case d.via != nil && chosen:
		return d.dialVia(ctx, addr)
	case d.via != nil:
		// The upstream proxy resolves names itself, out of regproxy's
		// sight; an address literal can still be judged here.
		if err := d.checkLiteral(addr); err != nil {
			return nil, err
		}
		return d.dialVia(ctx, addr)
	case chosen:
		return d.direct.DialContext(ctx, network, addr)
	}
	return d.guarded.DialContext(ctx, network, addr)
}

// control is the guarded dialer's last word on each address it connects to.
func (d *dialer) control(_, address string, _ syscall.RawConn) error {
	dst, err := netip.ParseAddrPort(address)
	if err != nil {
		return &refusedError{addr: address, reason: "not an IP address and port"}
	}
	return d.check(dst)
}

// check applies forbiddenAddr to dst, once for each address regproxy
// listens on (once with none before it serves).
func (d *dialer) check(dst netip.AddrPort) error {
	selves := []netip.AddrPort{{}}
	if p := d.selves.Load(); p != nil {
		selves = *p
	}
	for _, self := range selves {
		if reason, bad := forbiddenAddr(dst, self, hostHasAddr); bad {
			return &refusedError{addr: dst.String(), reason: reason}
		}
	}
	return nil
}

// checkLiteral applies the guard to addr when its host is an IP literal.
func (d *dialer) checkLiteral(addr string) error {
	dst, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil // a name: the upstream proxy resolves it
	}
	return d.check(dst)
}

// dialVia opens a tunnel to addr through the upstream proxy:
//  1. connect to the proxy;
//  2. send CONNECT addr, with Basic Proxy-Authorization if the proxy URL
//     has user info;
//  3. accept only a 2xx; the connection is then a raw pipe to addr.
func (d *dialer) dialVia(ctx context.Context, addr string) (net.Conn, error) {
	conn, err := d.direct.DialContext(ctx, "tcp", d.via.Host)
	if err != nil {
		return nil, fmt.Errorf("upstream proxy %s: %w", d.via.Host, err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	} else {
		conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: addr}, Host: addr, Header: http.Header{}}
	if u := d.via.User; u != nil {
		pw, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pw)))
	}
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("upstream proxy %s: %w", d.via.Host, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil || resp.StatusCode/100 != 2 {
		conn.Close()
		if err == nil {
			err = fmt.Errorf("CONNECT %s: %s", addr, resp.Status)
		}
		return nil, fmt.Errorf("upstream proxy %s: %w", d.via.Host, err)
	}
	conn.SetDeadline(time.Time{})
	if br.Buffered() > 0 { // bytes from addr that came with the 200
		return &bufferedConn{Conn: conn, r: br}, nil
	}
	return conn, nil
}

// bufferedConn reads first what a bufio.Reader already holds.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection, so that a tunnel can pass on the
// end of one direction while the other still runs.
func (c *bufferedConn) CloseWrite() error {
	if hc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return c.Conn.Close()
}
