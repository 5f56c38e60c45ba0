package ca

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"
)

// clockSkew backdates every certificate, so a client whose clock runs a
// little behind ours still accepts a leaf minted a moment ago.
const clockSkew = time.Hour

// errInvalidHost is wrapped by every error Leaf returns for a bad host.
var errInvalidHost = errors.New("ca: invalid host")

// serialLimit bounds serial numbers to 128 bits (RFC 5280 §4.1.2.2 allows up
// to 20 octets; at least 64 random bits are required by the CA/B Forum).
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// call is one mint in progress; joiners wait on done, then read cert and err.
type call struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

// Leaf returns a certificate for host (a DNS name or IP literal, without a
// port), signed by the CA, whose chain includes the CA certificate. Leaves
// are cached per host and re-minted when they expire within RenewBefore;
// concurrent first requests for one host share a single mint. DNS names
// match case-insensitively; an empty host, a port, a wildcard or any
// character outside a DNS name is an error.
func (c *CA) Leaf(host string) (*tls.Certificate, error) {
	key, err := normalizeHost(host)
	if err != nil {
		return nil, err
	}
	if cert, ok := c.cache.Get(key); ok && c.fresh(cert) {
		return cert, nil
	}
	return c.mintOnce(key)
}

// mintOnce mints a leaf for host unless another goroutine already is, in
// which case it waits for that one. The lock covers only the map: the
// signature is made outside it, so other hosts never wait.
func (c *CA) mintOnce(host string) (*tls.Certificate, error) {
	c.mu.Lock()
	if cl, ok := c.inflight[host]; ok {
		c.mu.Unlock()
		<-cl.done
		return cl.cert, cl.err
	}
	cl := &call{done: make(chan struct{})}
	c.inflight[host] = cl
	c.mu.Unlock()

	cl.cert, cl.err = c.mintAndCache(host)

	c.mu.Lock()
	delete(c.inflight, host)
	c.mu.Unlock()
	close(cl.done)
	return cl.cert, cl.err
}

// mintAndCache mints a leaf for host and caches it. It must be the only
// mint in flight for host.
func (c *CA) mintAndCache(host string) (*tls.Certificate, error) {
	// Another mint may have finished between our cache miss and taking the
	// in-flight slot. It cached its leaf before freeing the slot, so looking
	// again here is enough to mint only once.
	if cert, ok := c.cache.Get(host); ok && c.fresh(cert) {
		return cert, nil
	}
	cert, err := c.mint(host, c.now())
	if err != nil {
		return nil, err
	}
	c.minted.Add(1)
	c.cache.Add(host, cert)
	return cert, nil
}

// fresh reports whether a cached leaf may still be served. A leaf already
// cut short by the CA's own expiry stays until it expires, because a new
// one could not last longer.
func (c *CA) fresh(cert *tls.Certificate) bool {
	now, notAfter := c.now(), cert.Leaf.NotAfter
	if now.Before(notAfter.Add(-c.opts.RenewBefore)) {
		return true
	}
	return !notAfter.Before(c.cert.NotAfter) && now.Before(notAfter)
}

// mint signs a new leaf for an already normalized host.
func (c *CA) mint(host string, now time.Time) (*tls.Certificate, error) {
	if !now.Before(c.cert.NotAfter) {
		return nil, fmt.Errorf("ca: mint %s: %w at %s", host, errExpired,
			c.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	tmpl, err := c.leafTemplate(host, now)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, c.leafKey.Public(), c.signer)
	if err != nil {
		return nil, fmt.Errorf("ca: mint %s: %w", host, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: mint %s: %w", host, err)
	}
	return &tls.Certificate{
		Certificate: [][]byte{der, c.cert.Raw},
		PrivateKey:  c.leafKey,
		Leaf:        leaf,
	}, nil
}

// leafTemplate describes a server certificate for host, valid from
// now-clockSkew until LeafValidity from now or the CA's expiry, if sooner.
func (c *CA) leafTemplate(host string, now time.Time) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(c.opts.LeafValidity)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		// ECDSA keys only sign; KeyEncipherment would be for RSA key transport.
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	// Clients match only SANs, never the CN (RFC 6125 §6.4.4), so the SAN
	// type must be right: an IP in a DNS SAN would not verify.
	if ip := net.ParseIP(host); ip != nil {
		// No CN: OpenSSL checks a CN that looks like a DNS name ("10.0.0.5"
		// does) against the CA's DNS name constraints when a leaf has no DNS
		// SAN, and would refuse it. With an empty subject, Go marks the SAN
		// critical, as RFC 5280 §4.2.1.6 requires.
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.Subject = pkix.Name{CommonName: host}
		tmpl.DNSNames = []string{host}
	}
	return tmpl, nil
}

// randomSerial returns a random positive serial number of up to 128 bits.
func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, serialLimit)
	if err != nil {
		return nil, fmt.Errorf("ca: serial number: %w", err)
	}
	// Serials must be positive (RFC 5280 §4.1.2.2); zero is one draw in 2^128.
	return n.Add(n, big.NewInt(1)), nil
}

// normalizeHost validates host and returns its cache key: an IP in
// canonical form, or a lowercased DNS name (SNI is case-insensitive).
func normalizeHost(host string) (string, error) {
	if host == "" {
		return "", fmt.Errorf("%w: empty", errInvalidHost)
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.String(), nil
	}
	// Only a colon can start a port; testing for it first keeps SplitHostPort,
	// which allocates its error, off the handshake path.
	if strings.Contains(host, ":") {
		if _, _, err := net.SplitHostPort(host); err == nil {
			return "", fmt.Errorf("%w %q: must not include a port", errInvalidHost, host)
		}
	}
	name := strings.ToLower(host)
	if err := checkDNSName(name); err != nil {
		return "", fmt.Errorf("%w %q: %v", errInvalidHost, host, err)
	}
	return name, nil
}

// checkDNSName checks a lowercased name against RFC 1035 lengths and the
// LDH characters, plus '_', which Go's verifier also accepts because
// internal hosts use it. Wildcards are refused: leaves are per host.
func checkDNSName(name string) error {
	if len(name) > 253 {
		return errors.New("longer than 253 characters")
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("each label must be 1 to 63 characters")
		}
		for _, r := range label {
			if !isHostChar(r) {
				return fmt.Errorf("invalid character %q", r)
			}
		}
	}
	return nil
}

// isHostChar reports whether r may appear in a lowercased host label.
func isHostChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_'
}
