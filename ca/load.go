package ca

import (
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
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// File names inside the directory given to LoadOrCreate.
const (
	certName = "ca.crt"
	keyName  = "ca.key"
)

// Causes of LoadFiles errors, for errors.Is in tests.
var (
	errNoPEM       = errors.New("no PEM block found")
	errNotCA       = errors.New("not a CA certificate")
	errKeyMismatch = errors.New("private key does not match certificate")
	errExpired     = errors.New("certificate expired")
)

// LoadOrCreate loads dir/ca.crt and dir/ca.key, or generates them on first
// start: ECDSA P-256, self-signed, valid for 10 years, without name
// constraints. dir is created 0700, the key written 0600 and the certificate
// 0644, each atomically. A later call reuses the same files.
func LoadOrCreate(dir string, opts Options) (*CA, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	certFile, keyFile := filepath.Join(dir, certName), filepath.Join(dir, keyName)
	// The certificate is written last, so its presence marks a complete
	// pair. A key left alone by a crash was never trusted by any client (they
	// install the certificate), so generating over it loses nothing.
	switch _, err := os.Stat(certFile); {
	case err == nil:
		return load(certFile, keyFile, opts)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("ca: %w", err)
	}
	return create(dir, nil, opts)
}

// Generate writes a new CA to dir as LoadOrCreate would, replacing any CA
// already there, and loads it. A non-empty permit (DNS names and IP
// literals, without ports) name-constrains the CA to those hosts: see
// constrain. Nodes that trusted a replaced CA must trust the new one.
func Generate(dir string, permit []string, opts Options) (*CA, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return create(dir, permit, opts)
}

// Exists reports whether dir holds a CA certificate, which LoadOrCreate
// would load rather than generate.
func Exists(dir string) (bool, error) {
	switch _, err := os.Stat(filepath.Join(dir, certName)); {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("ca: %w", err)
	}
}

// create generates a CA pair in memory, then writes it to dir and loads it;
// opts must already hold defaults. Any old certificate is removed before the
// new key is written, so that a crash between the two writes leaves a key
// without a certificate (which LoadOrCreate replaces), never a mismatched
// pair.
func create(dir string, permit []string, opts Options) (*CA, error) {
	certPEM, keyPEM, err := newPair(opts.Now(), permit)
	if err != nil {
		return nil, err
	}
	if err := mkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	certFile, keyFile := filepath.Join(dir, certName), filepath.Join(dir, keyName)
	switch err := os.Remove(certFile); {
	case err == nil:
		// The removal must be on disk before the new key can be: a power
		// cut would otherwise leave the old certificate with the new key.
		if err := syncDir(dir); err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("ca: %w", err)
	}
	if err := writeAtomic(keyFile, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeAtomic(certFile, certPEM, 0o644); err != nil {
		return nil, err
	}
	return load(certFile, keyFile, opts)
}

// LoadFiles loads a CA certificate and its private key from PEM files. The
// key may be PKCS#1, PKCS#8 or SEC1, and RSA, ECDSA or Ed25519. The
// certificate must be a CA, match the key, and be valid now.
func LoadFiles(certFile, keyFile string, opts Options) (*CA, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return load(certFile, keyFile, opts)
}

// load reads, checks and wraps a CA pair; opts must already hold defaults.
func load(certFile, keyFile string, opts Options) (*CA, error) {
	cert, err := readCert(certFile)
	if err != nil {
		return nil, err
	}
	if err := checkCA(cert, opts.Now()); err != nil {
		return nil, fmt.Errorf("ca: %s: %w", certFile, err)
	}
	signer, err := readKey(keyFile)
	if err != nil {
		return nil, err
	}
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(signer.Public()) {
		return nil, fmt.Errorf("ca: %s: %w %s", keyFile, errKeyMismatch, certFile)
	}
	return newCA(cert, signer, opts)
}

// readCert parses the first CERTIFICATE block of a PEM file.
func readCert(file string) (*x509.Certificate, error) {
	block, err := readPEM(file, func(typ string) bool { return typ == "CERTIFICATE" })
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %w", file, err)
	}
	return cert, nil
}

// readKey parses the first private key block of a PEM file. Like
// tls.X509KeyPair it tries every encoding, because PEM labels are often wrong.
func readKey(file string) (crypto.Signer, error) {
	// The suffix matches "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY",
	// and skips the "EC PARAMETERS" block openssl writes before SEC1 keys.
	block, err := readPEM(file, func(typ string) bool { return strings.HasSuffix(typ, "PRIVATE KEY") })
	if err != nil {
		return nil, err
	}
	if block.Type == "ENCRYPTED PRIVATE KEY" {
		return nil, fmt.Errorf("ca: %s: encrypted private keys are not supported", file)
	}
	key, err := parseKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %w", file, err)
	}
	return key, nil
}

// parseKey decodes a DER private key in PKCS#8, PKCS#1 or SEC1 form.
func parseKey(der []byte) (crypto.Signer, error) {
	var key any
	var err error
	if key, err = x509.ParsePKCS8PrivateKey(der); err != nil {
		if key, err = x509.ParsePKCS1PrivateKey(der); err != nil {
			if key, err = x509.ParseECPrivateKey(der); err != nil {
				return nil, errors.New("unsupported private key (want PKCS#1, PKCS#8 or SEC1)")
			}
		}
	}
	switch k := key.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
		return k.(crypto.Signer), nil
	default:
		return nil, fmt.Errorf("unsupported private key type %T (want RSA, ECDSA or Ed25519)", key)
	}
}

// readPEM returns the first block of file whose type is wanted.
func readPEM(file string, want func(typ string) bool) (*pem.Block, error) {
	rest, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("ca: %s: %w", file, errNoPEM)
		}
		if want(block.Type) {
			return block, nil
		}
	}
}

// checkCA rejects a certificate that cannot sign leaves now.
func checkCA(cert *x509.Certificate, now time.Time) error {
	switch {
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return fmt.Errorf("%w (basic constraints do not say CA)", errNotCA)
	// RFC 5280 §4.2.1.3: an absent key usage allows everything; a present
	// one must include keyCertSign for the key to sign certificates.
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return fmt.Errorf("%w (key usage lacks certificate signing)", errNotCA)
	case !now.Before(cert.NotAfter):
		return fmt.Errorf("%w at %s", errExpired, cert.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(cert.NotBefore):
		return fmt.Errorf("certificate not valid until %s", cert.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// newPair creates a fresh self-signed CA, name-constrained to permit if it
// is not empty, and returns its certificate and key in PEM.
func newPair(now time.Time, permit []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: generate key: %w", err)
	}
	tmpl, err := caTemplate(now)
	if err != nil {
		return nil, nil, err
	}
	if len(permit) > 0 {
		if err := constrain(tmpl, permit); err != nil {
			return nil, nil, err // already says "ca: invalid host"
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: self-sign: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: marshal key: %w", err)
	}
	return pemBytes("CERTIFICATE", der), pemBytes("PRIVATE KEY", keyDER), nil
}

// caTemplate describes regproxy's own CA. MaxPathLen 0 means the key can
// sign leaves but no intermediate CA, which bounds the damage of a leak.
func caTemplate(now time.Time) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: caName(), Organization: []string{"regproxy"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}, nil
}

// caName names the CA after the machine, so a user who trusts CAs from
// several regproxy hosts can tell them apart in a trust store.
func caName() string {
	name := "regproxy CA"
	if host, err := os.Hostname(); err == nil && host != "" {
		name += " (" + host + ")"
	}
	// RFC 5280 appendix A: ub-common-name is 64 characters.
	if len(name) > 64 {
		name = name[:64]
	}
	return name
}

// pemBytes encodes one PEM block.
func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writeAtomic writes data to a temporary file in the target's directory and
// renames it into place, so a reader never sees a partial file and the key
// is never readable by others, even for a moment (CreateTemp uses 0600).
// The file is synced before the rename, so that its name never reaches the
// disk before its bytes, and the directory after it, so that the file
// survives a power cut: nodes trust the certificate from then on.
func writeAtomic(path string, data []byte, perm fs.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("ca: write %s: %w", path, err)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	// Chmod is not subject to the umask, so the mode is exactly perm.
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := syncFile(f); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncFile flushes a file or directory to stable storage. Tests replace it
// to see what is synced when.
var syncFile = (*os.File).Sync

// syncDir syncs directory dir, so that the names in it survive a power cut.
// Some filesystems (network and FUSE ones) cannot sync a directory and say
// so with EINVAL; their renames are as durable as they make them.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = errors.Join(syncFile(f), f.Close())
	if errors.Is(err, syscall.EINVAL) {
		return nil
	}
	return err
}

// mkdirAll is os.MkdirAll that also syncs the parent of each directory it
// creates, so that the new directories survive a power cut.
func mkdirAll(dir string, perm fs.FileMode) error {
	var created []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || filepath.Dir(d) == d {
			break
		}
		created = append(created, d)
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	for _, d := range created {
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}
