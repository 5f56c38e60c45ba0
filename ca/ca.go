// Package ca owns regproxy's certificate authority: it loads or generates
// the CA on disk and mints short-lived leaf certificates for intercepted
// registry hosts, cached in memory and renewed before they expire. It knows
// nothing of proxies or HTTP.
//
// A CA comes from LoadOrCreate (files regproxy generated itself on first
// start), Generate (a new CA on request, optionally name-constrained to the
// registries, so that a stolen key cannot vouch for any other name) or
// LoadFiles (a CA the operator supplies). CheckModes reports a CA directory
// that other users can get at.
//
// Leaf is safe for concurrent use and is meant to back
// tls.Config.GetCertificate. Every leaf shares one ECDSA P-256 key held only
// in memory, so minting costs a single signature; the key dies with the
// process, and with it every leaf. Leaf signs for any valid host: name
// constraints bind the clients that verify leaves, not the minting.
//
// The package does not install the CA into any trust store, does not revoke,
// and never writes leaves to disk.
package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Defaults for the zero fields of Options.
const (
	defaultLeafValidity = 7 * 24 * time.Hour
	defaultRenewBefore  = 24 * time.Hour
	defaultCacheSize    = 1024
)

// Options tune leaf minting. Zero values mean the defaults.
type Options struct {
	// LeafValidity is how long a minted leaf lasts; default 7*24h. Leaves
	// never outlive the CA certificate.
	LeafValidity time.Duration
	// RenewBefore makes a cached leaf be re-minted when it expires within
	// this; default 24h. It must be shorter than LeafValidity.
	RenewBefore time.Duration
	// CacheSize is the number of leaves kept in the LRU; default 1024.
	CacheSize int
	// Now reads the clock; nil means time.Now (tests move the clock).
	Now func() time.Time
}

// withDefaults fills the zero fields and rejects values that cannot work.
func (o Options) withDefaults() (Options, error) {
	if o.LeafValidity == 0 {
		o.LeafValidity = defaultLeafValidity
	}
	if o.RenewBefore == 0 {
		o.RenewBefore = defaultRenewBefore
	}
	if o.CacheSize == 0 {
		o.CacheSize = defaultCacheSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	switch {
	case o.LeafValidity < 0, o.RenewBefore < 0, o.CacheSize < 0:
		return o, errors.New("ca: options must not be negative")
	case o.RenewBefore >= o.LeafValidity:
		// Otherwise every leaf would be due for renewal the moment it is
		// minted, and each handshake would cost a signature.
		return o, fmt.Errorf("ca: RenewBefore %v must be shorter than LeafValidity %v",
			o.RenewBefore, o.LeafValidity)
	}
	return o, nil
}

// CA is a certificate authority that mints leaf certificates for hosts.
// Its methods are safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	signer  crypto.Signer
	// leafKey is the one private key shared by every leaf of this CA.
	leafKey *ecdsa.PrivateKey
	opts    Options
	// cache maps a normalized host to its leaf; it locks itself.
	cache *lru.Cache[string, *tls.Certificate]

	mu       sync.Mutex       // guards inflight, and nothing else
	inflight map[string]*call // hosts being minted right now

	minted atomic.Uint64 // leaves signed since the CA was loaded, for Minted
}

// newCA builds a CA around a checked certificate and its key. opts must
// already hold defaults.
func newCA(cert *x509.Certificate, signer crypto.Signer, opts Options) (*CA, error) {
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: generate leaf key: %w", err)
	}
	cache, err := lru.New[string, *tls.Certificate](opts.CacheSize)
	if err != nil {
		return nil, fmt.Errorf("ca: leaf cache: %w", err)
	}
	return &CA{
		cert:     cert,
		certPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		signer:   signer,
		leafKey:  leafKey,
		opts:     opts,
		cache:    cache,
		inflight: make(map[string]*call),
	}, nil
}

// CertPEM returns the CA certificate in PEM, for clients to trust. The
// caller owns the returned slice.
func (c *CA) CertPEM() []byte {
	return bytes.Clone(c.certPEM)
}

// Certificate returns the parsed CA certificate. Callers must not modify it.
func (c *CA) Certificate() *x509.Certificate {
	return c.cert
}

// Minted reports how many leaves the CA has signed since it was loaded
// (cache hits excluded), for metrics.
func (c *CA) Minted() uint64 {
	return c.minted.Load()
}

// now reads the configured clock.
func (c *CA) now() time.Time {
	return c.opts.Now()
}
