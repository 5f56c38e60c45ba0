package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
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
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "regproxy-bench upstream CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caCert, caDER, err := issue(caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("issue CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	_, leafDER, err := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: upstreamHost},
		DNSNames:    []string{upstreamHost},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("issue server certificate: %w", err)
	}
	return writePKI(dir, caCert, caDER, leafDER, key)
}

// writePKI writes the PEM files and assembles the pki.
func writePKI(dir string, caCert *x509.Certificate, caDER, leafDER []byte, key *ecdsa.PrivateKey) (*pki, error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	p := &pki{
		pool:    x509.NewCertPool(),
		server:  tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key},
		caFile:  filepath.Join(dir, "upstream-ca.pem"),
		crtFile: filepath.Join(dir, "upstream.pem"),
		keyFile: filepath.Join(dir, "upstream-key.pem"),
	}
	p.pool.AddCert(caCert)
	for file, block := range map[string]*pem.Block{
		p.caFile:  {Type: "CERTIFICATE", Bytes: caDER},
		p.crtFile: {Type: "CERTIFICATE", Bytes: leafDER},
		p.keyFile: {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// issue signs tmpl with the parent's key under a random serial number.
func issue(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) (*x509.Certificate, []byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, der, err
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
