package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// clock is a settable Options.Now, safe for concurrent use.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) Now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) Add(d time.Duration) { c.ns.Add(int64(d)) }

// newTestCA generates a CA in a fresh directory.
func newTestCA(tb testing.TB, opts Options) *CA {
	tb.Helper()
	c, err := LoadOrCreate(filepath.Join(tb.TempDir(), "ca"), opts)
	if err != nil {
		tb.Fatalf("LoadOrCreate: %v", err)
	}
	return c
}

// writeCert self-signs a CA certificate for key, lets edit change the
// template, and writes it as PEM to dir/name.
func writeCert(t *testing.T, dir, name string, key crypto.Signer, edit func(*x509.Certificate)) string {
	t.Helper()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	return writePEM(t, dir, name, pemBytes("CERTIFICATE", der))
}

func writePEM(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustECDSA(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func mustPKCS8(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemBytes("PRIVATE KEY", der)
}

func TestLoadOrCreate(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "state", "ca")
	first, err := LoadOrCreate(dir, Options{})
	if err != nil {
		t.Fatalf("first LoadOrCreate: %v", err)
	}
	second, err := LoadOrCreate(dir, Options{})
	if err != nil {
		t.Fatalf("second LoadOrCreate: %v", err)
	}
	if got, want := second.CertPEM(), first.CertPEM(); !bytes.Equal(got, want) {
		t.Errorf("reloaded CA differs:\ngot  %s\nwant %s", got, want)
	}
	for path, want := range map[string]fs.FileMode{
		dir: fs.ModeDir | 0o700, filepath.Join(dir, keyName): 0o600, filepath.Join(dir, certName): 0o644,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode(); got != want {
			t.Errorf("mode of %s = %v, want %v", path, got, want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("dir holds %d entries, want 2 (no temp files left)", len(entries))
	}
	if got, want := decodePEM(t, first.CertPEM()), first.Certificate(); !got.Equal(want) {
		t.Errorf("CertPEM does not hold Certificate()")
	}
	checkGenerated(t, first.Certificate())
}

// checkGenerated checks the shape LoadOrCreate promises.
func checkGenerated(t *testing.T, cert *x509.Certificate) {
	t.Helper()
	if !cert.IsCA || cert.MaxPathLen != 0 || !cert.MaxPathLenZero {
		t.Errorf("IsCA, MaxPathLen, MaxPathLenZero = %v, %d, %v; want true, 0, true",
			cert.IsCA, cert.MaxPathLen, cert.MaxPathLenZero)
	}
	if got, want := cert.KeyUsage, x509.KeyUsageCertSign|x509.KeyUsageCRLSign; got != want {
		t.Errorf("KeyUsage = %v, want %v", got, want)
	}
	if got := cert.Subject.CommonName; !strings.HasPrefix(got, "regproxy CA") {
		t.Errorf("CN = %q, want prefix %q", got, "regproxy CA")
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key = %T, want ECDSA P-256", cert.PublicKey)
	}
	if got, want := cert.NotAfter.Sub(cert.NotBefore), 10*365*24*time.Hour; got < want {
		t.Errorf("validity = %v, want at least %v", got, want)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
}

func TestLoadOrCreateMissingKey(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := LoadOrCreate(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, keyName)); err != nil {
		t.Fatal(err)
	}
	// A trusted certificate without its key must not be silently replaced.
	if _, err := LoadOrCreate(dir, Options{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadOrCreate without key: got %v, want fs.ErrNotExist", err)
	}
}

func TestLoadFiles(t *testing.T) {
	t.Parallel()
	ecKey := func(t *testing.T) crypto.Signer { return mustECDSA(t) }
	tests := []struct {
		name   string
		newKey func(t *testing.T) crypto.Signer
		encode func(t *testing.T, key crypto.Signer) []byte
	}{
		{"ecdsa pkcs8", ecKey, mustPKCS8},
		{"ecdsa sec1 after EC PARAMETERS", ecKey, func(t *testing.T, key crypto.Signer) []byte {
			der, err := x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
			if err != nil {
				t.Fatal(err)
			}
			return append(pemBytes("EC PARAMETERS", []byte{6, 8}), pemBytes("EC PRIVATE KEY", der)...)
		}},
		{"rsa pkcs1", newRSA, func(t *testing.T, key crypto.Signer) []byte {
			return pemBytes("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey)))
		}},
		{"rsa pkcs8", newRSA, mustPKCS8},
		{"ed25519 pkcs8", func(t *testing.T) crypto.Signer {
			_, key, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			return key
		}, mustPKCS8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir, key := t.TempDir(), tt.newKey(t)
			certFile := writeCert(t, dir, "ca.pem", key, nil)
			keyFile := writePEM(t, dir, "key.pem", tt.encode(t, key))
			c, err := LoadFiles(certFile, keyFile, Options{})
			if err != nil {
				t.Fatalf("LoadFiles: %v", err)
			}
			want, _ := os.ReadFile(certFile)
			if got := c.CertPEM(); !bytes.Equal(got, want) {
				t.Errorf("CertPEM = %s, want %s", got, want)
			}
			verifyLeaf(t, c, "registry.test", time.Now())
		})
	}
}

func newRSA(t *testing.T) crypto.Signer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func TestLoadFilesErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key, other := mustECDSA(t), mustECDSA(t)
	keyFile := writePEM(t, dir, "ca.key", mustPKCS8(t, key))
	good := writeCert(t, dir, "good.crt", key, nil)
	garbage := writePEM(t, dir, "garbage", []byte("this is not PEM\n"))
	tests := []struct {
		name      string
		cert, key string
		want      error
	}{
		{"missing cert", filepath.Join(dir, "nope.crt"), keyFile, fs.ErrNotExist},
		{"missing key", good, filepath.Join(dir, "nope.key"), fs.ErrNotExist},
		{"garbage cert", garbage, keyFile, errNoPEM},
		{"garbage key", good, garbage, errNoPEM},
		{"key file holds only a certificate", good, good, errNoPEM},
		{"not a CA", writeCert(t, dir, "leaf.crt", key, func(c *x509.Certificate) {
			c.IsCA = false
		}), keyFile, errNotCA},
		{"no cert sign usage", writeCert(t, dir, "nosign.crt", key, func(c *x509.Certificate) {
			c.KeyUsage = x509.KeyUsageDigitalSignature
		}), keyFile, errNotCA},
		{"mismatched key", good, writePEM(t, dir, "other.key", mustPKCS8(t, other)), errKeyMismatch},
		{"expired", writeCert(t, dir, "old.crt", key, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)
		}), keyFile, errExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := LoadFiles(tt.cert, tt.key, Options{})
			if !errors.Is(err, tt.want) {
				t.Fatalf("LoadFiles error = %v, want %v", err, tt.want)
			}
			if msg := err.Error(); strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
		})
	}
}

func TestOptionsRejected(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts Options
	}{
		{"negative validity", Options{LeafValidity: -time.Hour}},
		{"negative renew", Options{RenewBefore: -time.Hour}},
		{"negative cache", Options{CacheSize: -1}},
		{"renew not shorter than validity", Options{LeafValidity: time.Hour, RenewBefore: time.Hour}},
		{"renew default longer than validity", Options{LeafValidity: time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := LoadOrCreate(filepath.Join(t.TempDir(), "ca"), tt.opts); err == nil {
				t.Errorf("LoadOrCreate(%+v) succeeded, want error", tt.opts)
			}
		})
	}
}

// decodePEM is a test helper that parses the single certificate in data.
func decodePEM(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
