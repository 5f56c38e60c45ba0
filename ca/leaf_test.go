package ca

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// verifyLeaf mints a leaf for host and checks it against a pool holding
// only the CA, as a client that trusts regproxy would.
func verifyLeaf(t *testing.T, c *CA, host string, now time.Time) *tls.Certificate {
	t.Helper()
	cert, err := c.Leaf(host)
	if err != nil {
		t.Fatalf("Leaf(%q): %v", host, err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.Certificate())
	_, err = cert.Leaf.Verify(x509.VerifyOptions{
		DNSName:     host,
		Roots:       roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		t.Fatalf("Verify leaf for %q: %v", host, err)
	}
	if got := len(cert.Certificate); got != 2 || !cert.Leaf.Equal(mustParse(t, cert.Certificate[0])) ||
		!c.Certificate().Equal(mustParse(t, cert.Certificate[1])) {
		t.Errorf("chain has %d certificates, want [leaf, CA]", got)
	}
	return cert
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestLeafVerifies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, host, wantCN string
		wantIP             bool
	}{
		{"dns name", "registry.test", "registry.test", false},
		{"mixed case", "Registry.Test", "registry.test", false},
		{"underscore", "my_registry.internal", "my_registry.internal", false},
		// No CN for addresses: OpenSSL would check "127.0.0.1" against DNS
		// name constraints.
		{"ipv4", "127.0.0.1", "", true},
		{"ipv6", "::1", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			c := newTestCA(t, Options{Now: clk.Now})
			leaf := verifyLeaf(t, c, tt.host, clk.Now()).Leaf
			if got := leaf.Subject.CommonName; got != tt.wantCN {
				t.Errorf("CN = %q, want %q", got, tt.wantCN)
			}
			if got := len(leaf.IPAddresses) == 1 && len(leaf.DNSNames) == 0; got != tt.wantIP {
				t.Errorf("IP SAN only = %v, want %v (IPs %v, DNS %v)", got, tt.wantIP, leaf.IPAddresses, leaf.DNSNames)
			}
			if got, want := leaf.NotBefore, clk.Now().Add(-time.Hour); !got.Equal(want) {
				t.Errorf("NotBefore = %v, want %v", got, want)
			}
			if got, want := leaf.NotAfter, clk.Now().Add(defaultLeafValidity); !got.Equal(want) {
				t.Errorf("NotAfter = %v, want %v", got, want)
			}
		})
	}
}

// TestLeafHandshake serves a leaf through crypto/tls, the way the proxy will.
func TestLeafHandshake(t *testing.T) {
	t.Parallel()
	c := newTestCA(t, Options{})
	roots := x509.NewCertPool()
	roots.AddCert(c.Certificate())
	serverConn, clientConn := net.Pipe()
	server := tls.Server(serverConn, &tls.Config{
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.Leaf(hello.ServerName)
		},
	})
	client := tls.Client(clientConn, &tls.Config{ServerName: "registry.test", RootCAs: roots})
	// Close the pipe ends, not the TLS conns: a TLS close_notify would block
	// on the synchronous pipe until its 5s write deadline.
	defer clientConn.Close()
	errc := make(chan error, 1)
	go func() {
		defer serverConn.Close()
		errc <- server.Handshake()
	}()
	if err := client.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
}

func TestLeafCached(t *testing.T) {
	t.Parallel()
	c := newTestCA(t, Options{})
	first, err := c.Leaf("registry.test")
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"registry.test", "REGISTRY.test"} {
		got, err := c.Leaf(host)
		if err != nil {
			t.Fatal(err)
		}
		if got != first || got.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0 {
			t.Errorf("Leaf(%q) = serial %v, want cached serial %v", host, got.Leaf.SerialNumber, first.Leaf.SerialNumber)
		}
	}
}

func TestLeafEvicted(t *testing.T) {
	t.Parallel()
	c := newTestCA(t, Options{CacheSize: 1})
	a1, _ := c.Leaf("a.test")
	if _, err := c.Leaf("b.test"); err != nil {
		t.Fatal(err)
	}
	if a2, _ := c.Leaf("a.test"); a2 == a1 {
		t.Errorf("Leaf(a.test) after eviction returned the old leaf, want a new one")
	}
}

func TestLeafRenewal(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		advance time.Duration
		wantNew bool
	}{
		{"well before renewal", 5 * 24 * time.Hour, false},
		{"just before renewal", 6*24*time.Hour - time.Second, false},
		{"inside renewal window", 6*24*time.Hour + time.Second, true},
		{"after expiry", 8 * 24 * time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			c := newTestCA(t, Options{Now: clk.Now})
			old, err := c.Leaf("registry.test")
			if err != nil {
				t.Fatal(err)
			}
			clk.Add(tt.advance)
			got := verifyLeaf(t, c, "registry.test", clk.Now())
			if isNew := got != old; isNew != tt.wantNew {
				t.Fatalf("new leaf = %v, want %v", isNew, tt.wantNew)
			}
			if tt.wantNew && !got.Leaf.NotAfter.After(old.Leaf.NotAfter) {
				t.Errorf("renewed NotAfter = %v, want after %v", got.Leaf.NotAfter, old.Leaf.NotAfter)
			}
		})
	}
}

// TestLeafCappedByCA checks that leaves never outlive the CA, are not
// re-minted on every call near its end, and stop once it expires.
func TestLeafCappedByCA(t *testing.T) {
	t.Parallel()
	dir, key := t.TempDir(), mustECDSA(t)
	certFile := writeCert(t, dir, "ca.pem", key, nil) // expires in 24h
	clk := newClock()
	clk.ns.Store(time.Now().UnixNano())
	c, err := LoadFiles(certFile, writePEM(t, dir, "ca.key", mustPKCS8(t, key)), Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	first := verifyLeaf(t, c, "registry.test", clk.Now())
	if got, want := first.Leaf.NotAfter, c.Certificate().NotAfter; !got.Equal(want) {
		t.Errorf("NotAfter = %v, want the CA's %v", got, want)
	}
	clk.Add(23 * time.Hour)
	if again, _ := c.Leaf("registry.test"); again != first {
		t.Errorf("leaf capped by the CA was re-minted; it cannot last longer")
	}
	clk.Add(2 * time.Hour)
	if _, err := c.Leaf("registry.test"); !errors.Is(err, errExpired) {
		t.Errorf("Leaf after CA expiry: got %v, want %v", err, errExpired)
	}
}

func TestLeafConcurrentMintsOnce(t *testing.T) {
	t.Parallel()
	c := newTestCA(t, Options{})
	const n = 16
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		certs [n]*tls.Certificate
	)
	for i := range n {
		wg.Go(func() {
			<-start
			cert, err := c.Leaf("registry.test")
			if err != nil {
				t.Error(err)
			}
			certs[i] = cert
		})
	}
	close(start)
	wg.Wait()
	for i, cert := range certs {
		if cert == nil || cert.Leaf.SerialNumber.Cmp(certs[0].Leaf.SerialNumber) != 0 {
			t.Fatalf("goroutine %d got a different leaf; want one mint for all %d", i, n)
		}
	}
}

// TestLeafMinted checks the counter behind regproxy_leaf_certificates_minted_total:
// signatures, not cache hits.
func TestLeafMinted(t *testing.T) {
	t.Parallel()
	clk := newClock()
	c := newTestCA(t, Options{Now: clk.Now})
	for _, host := range []string{"a.test", "a.test", "b.test", "A.test"} {
		if _, err := c.Leaf(host); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.Minted(); got != 2 {
		t.Fatalf("Minted() = %d after leaves for a.test (3 times) and b.test; want 2", got)
	}
	clk.Add(8 * 24 * time.Hour) // past the leaves' expiry: a.test is minted again
	if _, err := c.Leaf("a.test"); err != nil {
		t.Fatal(err)
	}
	if got := c.Minted(); got != 3 {
		t.Fatalf("Minted() = %d after a renewal; want 3", got)
	}
}

func TestLeafBadHosts(t *testing.T) {
	t.Parallel()
	c := newTestCA(t, Options{})
	tests := []struct{ name, host string }{
		{"empty", ""},
		{"dns with port", "registry.test:443"},
		{"ipv4 with port", "127.0.0.1:5000"},
		{"ipv6 with port", "[::1]:443"},
		{"bracketed ipv6", "[::1]"},
		{"ipv6 zone", "fe80::1%eth0"},
		{"space", "bad host.test"},
		{"slash", "bad/host"},
		{"wildcard", "*.registry.test"},
		{"empty label", "a..test"},
		{"leading dot", ".registry.test"},
		{"trailing dot", "registry.test."},
		{"non-ascii", "régistry.test"},
		{"long label", strings.Repeat("a", 64) + ".test"},
		{"long name", strings.Repeat("abcdefghi.", 26) + "test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if cert, err := c.Leaf(tt.host); !errors.Is(err, errInvalidHost) {
				t.Errorf("Leaf(%q) = %v, %v; want error %v", tt.host, cert, err, errInvalidHost)
			}
		})
	}
}
