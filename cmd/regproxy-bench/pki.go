package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"

	"github.com/regproxy/regproxy/internal/testpki"
)

// upstreamHost is the registry name clients ask for. It must not be a
// loopback name: Go's http.Transport never sends loopback requests through
// a proxy, and regproxy maps it to 127.0.0.1 with --resolve.
const upstreamHost = "registry.test"

// pki is the bench's own CA and the ECDSA P-256 server certificate it
// issued for upstreamHost. The upstream and the baseline server share it.
type pki struct {
	pool    *x509.CertPool  // the CA alone, for clients of the upstream and baseline
	server  tls.Certificate // the leaf, for the servers
	caFile  string          // the CA in PEM, for regproxy's --upstream-ca
	crtFile string          // the leaf in PEM, for the baseline process
	keyFile string          // the leaf's key in PEM, for the baseline process
}

// newPKI makes a fresh CA and leaf and writes their PEM files into dir.
func newPKI(dir string) (*pki, error) {
	t, err := testpki.New("regproxy-bench upstream CA", []string{upstreamHost})
	if err != nil {
		return nil, err
	}
	p := &pki{
		pool:    t.Pool,
		server:  t.Server,
		caFile:  filepath.Join(dir, "upstream-ca.pem"),
		crtFile: filepath.Join(dir, "upstream.pem"),
		keyFile: filepath.Join(dir, "upstream-key.pem"),
	}
	for file, pem := range map[string][]byte{p.caFile: t.CAPEM, p.crtFile: t.ServerPEM, p.keyFile: t.KeyPEM} {
		if err := os.WriteFile(file, pem, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// serverTLS is the TLS config of the upstream and the baseline: HTTP/1.1
// only, as regproxy offers its clients.
func serverTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}
}
