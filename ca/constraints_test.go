package ca

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// oidNameConstraints is the X.509 name constraints extension (RFC 5280
// §4.2.1.10).
var oidNameConstraints = asn1.ObjectIdentifier{2, 5, 29, 30}

// leafErr mints a leaf for host, as a leaked key could for any name, and
// verifies it with the CA as the only root, as a node that trusts regproxy
// would.
func leafErr(t *testing.T, c *CA, host string) error {
	t.Helper()
	cert, err := c.Leaf(host)
	if err != nil {
		t.Fatalf("Leaf(%q): %v", host, err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.Certificate())
	_, err = cert.Leaf.Verify(x509.VerifyOptions{
		DNSName:   host,
		Roots:     roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

// checkPermits checks that Go's verifier accepts a leaf for host exactly
// when want says, that a refusal is the name constraints' doing, and that
// Permits agrees with the verifier.
func checkPermits(t *testing.T, c *CA, host string, want bool) {
	t.Helper()
	err := leafErr(t, c, host)
	var invalid x509.CertificateInvalidError
	switch {
	case want && err != nil:
		t.Errorf("leaf for %s: %v, want it verified", host, err)
	case !want && err == nil:
		t.Errorf("leaf for %s verified, want it refused by the name constraints", host)
	case !want && (!errors.As(err, &invalid) || invalid.Reason != x509.CANotAuthorizedForThisName):
		t.Errorf("leaf for %s: %v, want a name constraint error", host, err)
	}
	if got := c.Permits(host); got != want {
		t.Errorf("Permits(%q) = %v, want %v (as the verifier decides)", host, got, want)
	}
}

func TestGenerateConstrained(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		permit     []string
		wantDNS    []string
		wantIPs    []string
		wantExDNS  []string
		wantExIPs  []string
		allowed    []string
		refused    []string
		refusedBad []string // not even valid hosts
	}{
		{
			name:    "dns names",
			permit:  []string{"docker.io", "registry-1.docker.io", "Quay.io", "docker.io", "cdn.example.net"},
			wantDNS: []string{"cdn.example.net", "docker.io", "quay.io"}, wantExIPs: []string{"0.0.0.0/0", "::/0"},
			allowed: []string{"docker.io", "registry-1.docker.io", "auth.docker.io", "quay.io", "cdn.example.net", "a.b.quay.io"},
			refused: []string{"evil.example.com", "notdocker.io", "docker.io.evil.test", "example.net",
				"127.0.0.1", "10.0.0.1", "::1"},
			refusedBad: []string{"", "*.docker.io", "docker.io:443"},
		},
		{
			name:    "dns names and addresses",
			permit:  []string{"registry.test", "10.1.2.3", "fd00::5"},
			wantDNS: []string{"registry.test"}, wantIPs: []string{"10.1.2.3/32", "fd00::5/128"},
			allowed: []string{"registry.test", "10.1.2.3", "fd00::5"},
			refused: []string{"evil.example.com", "10.1.2.4", "10.1.2.2", "fd00::6", "::ffff:10.1.2.4"},
		},
		{
			name:    "addresses only",
			permit:  []string{"127.0.0.1"},
			wantIPs: []string{"127.0.0.1/32"}, wantExDNS: []string{""},
			allowed: []string{"127.0.0.1"},
			refused: []string{"localhost", "evil.example.com", "127.0.0.2", "::1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Generate(filepath.Join(t.TempDir(), "ca"), tt.permit, Options{})
			if err != nil {
				t.Fatalf("Generate: %v", err)
			}
			cert := c.Certificate()
			checkGenerated(t, cert)
			checkConstraints(t, cert, tt.wantDNS, tt.wantIPs, tt.wantExDNS, tt.wantExIPs)
			if !c.Constrained() {
				t.Error("Constrained() = false, want true")
			}
			for _, host := range tt.allowed {
				checkPermits(t, c, host, true)
			}
			for _, host := range tt.refused {
				checkPermits(t, c, host, false)
			}
			for _, host := range tt.refusedBad {
				if c.Permits(host) {
					t.Errorf("Permits(%q) = true, want false", host)
				}
			}
		})
	}
}

// checkConstraints compares the name constraints of cert, which must be a
// critical extension, with the wanted ones.
func checkConstraints(t *testing.T, cert *x509.Certificate, dns, ips, exDNS, exIPs []string) {
	t.Helper()
	i := slices.IndexFunc(cert.Extensions, func(e pkix.Extension) bool { return e.Id.Equal(oidNameConstraints) })
	if i < 0 || !cert.Extensions[i].Critical || !cert.PermittedDNSDomainsCritical {
		t.Errorf("name constraints extension missing or not critical")
	}
	for _, c := range []struct {
		field     string
		got, want []string
	}{
		{"PermittedDNSDomains", cert.PermittedDNSDomains, dns},
		{"PermittedIPRanges", rangeStrings(cert.PermittedIPRanges), ips},
		{"ExcludedDNSDomains", cert.ExcludedDNSDomains, exDNS},
		{"ExcludedIPRanges", rangeStrings(cert.ExcludedIPRanges), exIPs},
	} {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("%s = %q, want %q", c.field, c.got, c.want)
		}
	}
}

func rangeStrings(ranges []*net.IPNet) []string {
	var s []string
	for _, r := range ranges {
		s = append(s, r.String())
	}
	return s
}

// TestUnconstrained checks that the CA of LoadOrCreate signs for any name,
// as it always has: constraints are opted into.
func TestUnconstrained(t *testing.T) {
	t.Parallel()
	for name, mk := range map[string]func(t *testing.T) *CA{
		"LoadOrCreate": func(t *testing.T) *CA { return newTestCA(t, Options{}) },
		"Generate(nil)": func(t *testing.T) *CA {
			c, err := Generate(filepath.Join(t.TempDir(), "ca"), nil, Options{})
			if err != nil {
				t.Fatal(err)
			}
			return c
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := mk(t)
			if c.Constrained() || len(c.PermittedNames()) != 0 {
				t.Errorf("Constrained() = %v, PermittedNames() = %q; want false, none", c.Constrained(), c.PermittedNames())
			}
			if slices.ContainsFunc(c.Certificate().Extensions, func(e pkix.Extension) bool { return e.Id.Equal(oidNameConstraints) }) {
				t.Error("certificate has a name constraints extension")
			}
			for _, host := range []string{"evil.example.com", "registry.test", "10.0.0.1", "::1"} {
				checkPermits(t, c, host, true)
			}
		})
	}
}

// TestGenerateReplaces checks that Generate replaces a CA in place, with
// the modes LoadOrCreate uses and no temporary files, and that Exists sees
// the CA.
func TestGenerateReplaces(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "ca")
	if ok, err := Exists(dir); ok || err != nil {
		t.Fatalf("Exists before any CA = %v, %v; want false, nil", ok, err)
	}
	old, err := LoadOrCreate(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := Exists(dir); !ok || err != nil {
		t.Fatalf("Exists = %v, %v; want true, nil", ok, err)
	}
	c, err := Generate(dir, []string{"registry.test"}, Options{})
	if err != nil {
		t.Fatalf("Generate over a CA: %v", err)
	}
	if bytes.Equal(c.CertPEM(), old.CertPEM()) {
		t.Fatal("Generate kept the old CA")
	}
	again, err := LoadOrCreate(dir, Options{})
	if err != nil || !bytes.Equal(again.CertPEM(), c.CertPEM()) || !again.Constrained() {
		t.Fatalf("LoadOrCreate after Generate: %v; want the new, constrained CA", err)
	}
	for path, want := range map[string]fs.FileMode{filepath.Join(dir, keyName): 0o600, filepath.Join(dir, certName): 0o644} {
		if fi, err := os.Stat(path); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v, %v; want mode %v", path, fi.Mode(), err, want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("dir holds %d entries, want 2 (no temp files left)", len(entries))
	}
}

// TestGenerateBadHostKeepsCA checks that a host the CA cannot be
// constrained to is refused before the old CA is touched.
func TestGenerateBadHostKeepsCA(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "ca")
	old, err := LoadOrCreate(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, permit := range [][]string{{"registry.test", "bad host"}, {"registry.test:5000"}, {"*.registry.test"}} {
		if _, err := Generate(dir, permit, Options{}); !errors.Is(err, errInvalidHost) {
			t.Errorf("Generate(%q) error = %v, want %v", permit, err, errInvalidHost)
		}
	}
	again, err := LoadOrCreate(dir, Options{})
	if err != nil || !bytes.Equal(again.CertPEM(), old.CertPEM()) {
		t.Errorf("after refused Generate calls: %v; want the old CA intact", err)
	}
}

func TestCheckModes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		dirMode       fs.FileMode
		keyMode       fs.FileMode
		wantDir, want bool // warnings for the directory, the key
	}{
		{"as generated", 0o700, 0o600, false, false},
		{"key owner read-only", 0o700, 0o400, false, false},
		{"key group readable", 0o700, 0o640, false, true},
		{"key world readable", 0o700, 0o644, false, true},
		{"key group writable", 0o700, 0o620, false, true},
		{"key others writable", 0o700, 0o602, false, true},
		{"dir group listable", 0o750, 0o600, true, false},
		{"dir world listable", 0o755, 0o600, true, false},
		{"both open", 0o777, 0o666, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "ca")
			newTestCAIn(t, dir)
			key := filepath.Join(dir, keyName)
			if err := os.Chmod(key, tt.keyMode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tt.dirMode); err != nil {
				t.Fatal(err)
			}
			var want []ModeWarning
			if tt.wantDir {
				want = append(want, ModeWarning{Path: dir, Mode: tt.dirMode, Want: 0o700})
			}
			if tt.want {
				want = append(want, ModeWarning{Path: key, Mode: tt.keyMode, Want: 0o600})
			}
			if got := CheckModes(dir); !slices.Equal(got, want) {
				t.Errorf("CheckModes = %+v, want %+v", got, want)
			}
		})
	}
	t.Run("missing dir", func(t *testing.T) {
		t.Parallel()
		if got := CheckModes(filepath.Join(t.TempDir(), "nope")); len(got) != 0 {
			t.Errorf("CheckModes of a missing dir = %+v, want none", got)
		}
	})
}

// newTestCAIn generates a CA in dir.
func newTestCAIn(t *testing.T, dir string) {
	t.Helper()
	if _, err := LoadOrCreate(dir, Options{}); err != nil {
		t.Fatal(err)
	}
}
