package upstreamauth_test

import (
	"strings"
	"testing"

	"github.com/regproxy/regproxy/upstreamauth"
)

// Regressions for what the fuzzers found.

// TestAuthRegistriesErrorQuotesNoPassword: a space in a password splits
// an AUTH_REGISTRIES entry; the error about the piece after it must not
// quote that piece.
func TestAuthRegistriesErrorQuotesNoPassword(t *testing.T) {
	_, err := upstreamauth.ParseAuthRegistries("ghcr.io:bob:my secret")
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("ParseAuthRegistries: %v; want an error that does not quote the password", err)
	}
}

// TestHostKeysInLookupForm: keys that Lookup is never asked for are
// refused rather than silently never matched.
func TestHostKeysInLookupForm(t *testing.T) {
	for _, v := range []string{"registry.local:05000=u:p", "registry.local:+5000=u:p", "[::1]=u:p"} {
		if _, _, err := upstreamauth.ParseFlag(v); err == nil {
			t.Errorf("ParseFlag(%q) accepted a key no request looks up", v)
		}
	}
	if _, _, err := upstreamauth.ParseFlag("registry.local:5000=u:p"); err != nil {
		t.Errorf("ParseFlag of a canonical host:port: %v", err)
	}
}
