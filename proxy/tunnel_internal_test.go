package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestForbiddenAddr has a row per clause of forbiddenAddr's rule, and rows
// for what it must let through.
func TestForbiddenAddr(t *testing.T) {
	t.Parallel()
	host := netip.MustParseAddr("192.0.2.7") // the only address "the host" has here
	hostAddr := func(ip netip.Addr) bool { return ip == host }
	wildcard := netip.MustParseAddrPort("[::]:3128")
	specific := netip.MustParseAddrPort("192.0.2.7:3128")
	for _, tc := range []struct {
		name string
		dst  string
		self netip.AddrPort
		want string // a word of the reason; "" means allowed
	}{
		{"loopback", "127.0.0.1:80", netip.AddrPort{}, "loopback"},
		{"loopback, all of 127/8", "127.3.2.1:80", netip.AddrPort{}, "loopback"},
		{"loopback, IPv6", "[::1]:80", netip.AddrPort{}, "loopback"},
		{"loopback, IPv4-mapped", "[::ffff:127.0.0.1]:80", netip.AddrPort{}, "loopback"},
		{"link-local, cloud metadata", "169.254.169.254:80", netip.AddrPort{}, "link-local"},
		{"link-local, IPv6", "[fe80::1]:80", netip.AddrPort{}, "link-local"},
		{"link-local, IPv6 with zone", "[fe80::1%eth0]:80", netip.AddrPort{}, "link-local"},
		{"link-local, IPv4-mapped", "[::ffff:169.254.169.254]:80", netip.AddrPort{}, "link-local"},
		{"unspecified", "0.0.0.0:80", netip.AddrPort{}, "unspecified"},
		{"unspecified, this network", "0.1.2.3:80", netip.AddrPort{}, "unspecified"},
		{"unspecified, IPv6", "[::]:80", netip.AddrPort{}, "unspecified"},
		{"unspecified, IPv4-mapped", "[::ffff:0.0.0.0]:80", netip.AddrPort{}, "unspecified"},
		{"own address", "192.0.2.7:3128", specific, "own listen address"},
		{"own address, IPv4-mapped", "[::ffff:192.0.2.7]:3128", specific, "own listen address"},
		{"own port on a host address, wildcard listen", "192.0.2.7:3128", wildcard, "own listen address"},
		{"own address, another port", "192.0.2.7:443", specific, ""},
		{"own port, another host", "192.0.2.8:3128", wildcard, ""},
		{"own port, not serving yet", "192.0.2.7:3128", netip.AddrPort{}, ""},
		{"public", "198.51.100.1:443", wildcard, ""},
		{"private, where in-house registries live", "10.0.0.5:443", wildcard, ""},
		{"IPv6 global", "[2001:db8::1]:443", wildcard, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reason, bad := forbiddenAddr(netip.MustParseAddrPort(tc.dst), tc.self, hostAddr)
			if bad != (tc.want != "") || !strings.Contains(reason, tc.want) {
				t.Errorf("forbiddenAddr(%s, self %s) = %q, %v; want refused for %q", tc.dst, tc.self, reason, bad, tc.want)
			}
		})
	}
}

// TestHostHasAddr: loopback is one of the host's addresses; a
// documentation address is not.
func TestHostHasAddr(t *testing.T) {
	t.Parallel()
	if !hostHasAddr(netip.MustParseAddr("127.0.0.1")) {
		t.Error("hostHasAddr(127.0.0.1) = false")
	}
	if hostHasAddr(netip.MustParseAddr("203.0.113.254")) {
		t.Error("hostHasAddr(203.0.113.254) = true")
	}
}

// TestDialerGuard: the dialer refuses forbidden addresses before it sends
// anything, exempts --resolve targets, and judges address literals it
// would send to an upstream proxy.
func TestDialerGuard(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	defer ln.Close()
	addr := ln.Addr().String()
	direct := newDialer(map[string]string{"chosen.test:443": addr}, nil)
	viaProxy := newDialer(nil, &url.URL{Scheme: "http", Host: addr})
	for _, tc := range []struct {
		name    string
		d       *dialer
		dst     string
		refused bool
	}{
		{"loopback literal", direct, addr, true},
		{"name of a loopback address", direct, strings.Replace(addr, "127.0.0.1", "localhost", 1), true},
		{"--resolve to loopback", direct, "chosen.test:443", false},
		{"metadata literal for the upstream proxy", viaProxy, "169.254.169.254:80", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			before := accepted.Load()
			c, err := tc.d.DialContext(ctx, "tcp", tc.dst)
			if c != nil {
				c.Close()
			}
			var re *refusedError
			if got := errors.As(err, &re); got != tc.refused {
				t.Fatalf("dial %s: %v; want refused %v", tc.dst, err, tc.refused)
			}
			if tc.refused && accepted.Load() != before {
				t.Errorf("dial %s was refused but reached the listener", tc.dst)
			}
		})
	}
}

// TestDialerGuardEveryListenAddress: the loop clause covers every port
// regproxy serves (the proxy port and the mirror port), not only the last
// one it started on.
func TestDialerGuardEveryListenAddress(t *testing.T) {
	t.Parallel()
	d := newDialer(nil, nil)
	host := netip.MustParseAddr("192.0.2.10") // a documentation address: judged, never dialled
	d.serving(net.TCPAddrFromAddrPort(netip.AddrPortFrom(host, 3128)))
	d.serving(net.TCPAddrFromAddrPort(netip.AddrPortFrom(host, 5000)))
	for _, tc := range []struct {
		port    uint16
		refused bool
	}{{3128, true}, {5000, true}, {5001, false}} {
		err := d.check(netip.AddrPortFrom(host, tc.port))
		var re *refusedError
		if got := errors.As(err, &re); got != tc.refused {
			t.Errorf("check %s:%d: %v; want refused %v", host, tc.port, err, tc.refused)
		}
	}
}

// TestTunnelPolicy: under allow everything is tunnelled; under deny only
// what the list holds, a host entry on every port.
func TestTunnelPolicy(t *testing.T) {
	t.Parallel()
	allowAll, err := newTunnels(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	deny, err := newTunnels(Config{TunnelDeny: true, TunnelAllow: []string{"Git.Example.com", "ssh.example.com:22"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		t      *tunnels
		target string
		want   bool
	}{
		{"allow: any host", allowAll, "anything.example:443", true},
		{"deny: host entry, port 443", deny, "git.example.com:443", true},
		{"deny: host entry, any port", deny, "git.example.com:9418", true},
		{"deny: host:port entry", deny, "ssh.example.com:22", true},
		{"deny: host:port entry, other port", deny, "ssh.example.com:443", false},
		{"deny: unlisted", deny, "other.example:443", false},
		{"deny: subdomain of a listed host", deny, "x.git.example.com:443", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tc.t.permits(tc.target); got != tc.want {
				t.Errorf("permits(%s) = %v, want %v", tc.target, got, tc.want)
			}
		})
	}
}

// TestTunnelConfig: zero values get the defaults, and a bad allow-list
// entry is named.
func TestTunnelConfig(t *testing.T) {
	t.Parallel()
	tu, err := newTunnels(Config{}, nil)
	if err != nil || tu.idle != defaultTunnelIdle || tu.max != defaultTunnelMax || tu.deny {
		t.Errorf("defaults: idle %v, max %d, deny %v, %v; want %v, %d, false", tu.idle, tu.max, tu.deny, err, defaultTunnelIdle, defaultTunnelMax)
	}
	if err := CheckTunnelAllow([]string{"ok.test", "bad host!"}); err == nil || !strings.Contains(err.Error(), "bad host!") {
		t.Errorf("CheckTunnelAllow with a bad entry: %v; want an error naming it", err)
	}
}

// TestTunnelAdmit: a client IP holds at most max tunnels; a released one
// frees a place; other clients count apart; after close nothing is
// admitted. (TestTunnelsEndWithTheProxy checks that close cuts tunnels.)
func TestTunnelAdmit(t *testing.T) {
	t.Parallel()
	tu, _ := newTunnels(Config{TunnelMaxPerClient: 2}, nil)
	conns := make([]net.Conn, 5)
	for i := range conns {
		conns[i], _ = net.Pipe()
		defer conns[i].Close()
	}
	admit := func(ip string, c net.Conn, want error) {
		t.Helper()
		if err := tu.admit(ip, c); !errors.Is(err, want) {
			t.Fatalf("admit(%s) = %v, want %v", ip, err, want)
		}
	}
	admit("10.0.0.1", conns[0], nil)
	admit("10.0.0.1", conns[1], nil)
	admit("10.0.0.1", conns[2], errTooManyTunnels)
	admit("10.0.0.2", conns[3], nil)
	tu.release("10.0.0.1", conns[0])
	admit("10.0.0.1", conns[2], nil)
	tu.release("10.0.0.1", conns[1])
	tu.release("10.0.0.1", conns[2])
	tu.release("10.0.0.2", conns[3])
	tu.close()
	admit("10.0.0.3", conns[4], errShuttingDown)
	if len(tu.perClient) != 0 || len(tu.open) != 0 {
		t.Errorf("after every release: perClient %v, open %d; want both empty", tu.perClient, len(tu.open))
	}
}
