package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestGenCA makes CAs with scripts/gen-ca.sh and checks them against what
// regproxy's own CA is: an ECDSA P-256 key nobody else may read, a CA
// certificate that can sign leaves but no intermediate, and, for a list of
// registries, name constraints that permit exactly what those of `regproxy
// ca init --name-constraints` permit for the same list (docker.io standing
// for Docker Hub's hosts in both). The fingerprint it prints is the one
// regproxy logs when it starts with the CA.
func TestGenCA(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, registries string }{
		{"none", ""},
		{"dns", "docker.io quay.io registry.test:5000"},
		{"dns and ip", "docker.io,ghcr.io 10.1.2.3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			args := []string{scriptPath(t, "gen-ca.sh"), "--out", dir}
			if tc.registries != "" {
				args = append(args, "--name-constraints", tc.registries)
			}
			r := newNodeRoot(t, nil).sh(t, nil, setupTimeout, args...)
			crt, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
			fp := pemFingerprint(t, crt)
			if r.code != 0 || !strings.Contains(r.stdout, "ca_sha256="+fp+"\n") {
				t.Fatalf("want exit status 0 and ca_sha256=%s; got %s", fp, r)
			}
			checkGenCA(t, crt, key)
			if tc.registries == "" {
				d := startDaemon(t, "--ca-cert", crt, "--ca-key", key)
				if !strings.Contains(d.log.String(), `"ca_sha256":"`+fp+`"`) {
					t.Errorf("regproxy with gen-ca.sh's CA did not log ca_sha256 %s:\n%s", fp, d.log)
				}
				return
			}
			data := t.TempDir()
			if out, err := exec.Command(binary, "ca", "init", "--data-dir", data, "--registries", tc.registries, "--name-constraints").CombinedOutput(); err != nil {
				t.Fatalf("regproxy ca init: %v\n%s", err, out)
			}
			sameConstraints(t, readCert(t, crt), readCert(t, filepath.Join(data, "ca", "ca.crt")))
		})
	}
	t.Run("refuses to replace", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "ca.key"), []byte("old"), 0o600); err != nil {
			t.Fatal(err)
		}
		r := newNodeRoot(t, nil).sh(t, nil, setupTimeout, scriptPath(t, "gen-ca.sh"), "--out", dir)
		if b, _ := os.ReadFile(filepath.Join(dir, "ca.key")); r.code != 1 || !strings.Contains(r.stderr, "--force replaces them") || string(b) != "old" {
			t.Errorf("want exit status 1, a hint at --force and the old key kept; got %s", r)
		}
	})
}

// checkGenCA checks the key and the certificate's CA properties.
func checkGenCA(t *testing.T, crt, key string) {
	t.Helper()
	info, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %04o, want 0600", key, info.Mode().Perm())
	}
	cert := readCert(t, crt)
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	switch {
	case !ok || pub.Curve != elliptic.P256():
		t.Errorf("key %T, want ECDSA P-256", cert.PublicKey)
	case !cert.BasicConstraintsValid || !cert.IsCA || cert.MaxPathLen != 0 || !cert.MaxPathLenZero:
		t.Errorf("basic constraints: CA %v, path length %d (zero %v); want a CA with path length 0", cert.IsCA, cert.MaxPathLen, cert.MaxPathLenZero)
	case cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign:
		t.Errorf("key usage %b, want certificate and CRL signing", cert.KeyUsage)
	}
}

func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM block", file)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return cert
}

// sameConstraints checks that two CAs' name constraints permit and exclude
// the same names. A DNS constraint permits the names below it too, so the
// permitted DNS lists need only cover each other.
func sameConstraints(t *testing.T, got, want *x509.Certificate) {
	t.Helper()
	if !got.PermittedDNSDomainsCritical {
		t.Error("name constraints not critical")
	}
	for _, pair := range [][2][]string{{got.PermittedDNSDomains, want.PermittedDNSDomains}, {want.PermittedDNSDomains, got.PermittedDNSDomains}} {
		for _, name := range pair[0] {
			if !slices.ContainsFunc(pair[1], func(d string) bool { return name == d || strings.HasSuffix(name, "."+d) }) {
				t.Errorf("permitted DNS %q of one CA is not permitted by the other: gen-ca.sh %q, regproxy %q", name, got.PermittedDNSDomains, want.PermittedDNSDomains)
			}
		}
	}
	for _, check := range []struct {
		what      string
		got, want []string
	}{
		{"permitted IP", ranges(got.PermittedIPRanges), ranges(want.PermittedIPRanges)},
		{"excluded IP", ranges(got.ExcludedIPRanges), ranges(want.ExcludedIPRanges)},
		{"excluded DNS", got.ExcludedDNSDomains, want.ExcludedDNSDomains},
	} {
		if !slices.Equal(check.got, check.want) {
			t.Errorf("%s: gen-ca.sh %q, regproxy %q", check.what, check.got, check.want)
		}
	}
}

func ranges[T interface{ String() string }](nets []T) []string {
	var s []string
	for _, n := range nets {
		s = append(s, n.String())
	}
	slices.Sort(s)
	return s
}
