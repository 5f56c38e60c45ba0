package main

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseResolve checks --resolve on two values. Accepted, each side of
// each value is HOST:PORT, and the map takes each lowercase HOST:PORT to
// the IP:PORT of the last value naming it; refused, the error quotes the
// value at fault.
func FuzzParseResolve(f *testing.F) {
	for _, s := range [][2]string{
		{"Registry.Test:443=127.0.0.1:8443", "cdn.test:443=[::1]:9443"},
		{"a.test:443=1.2.3.4:1", "A.TEST:443=1.2.3.4:2"}, {"a.test:443=b.test:65535", ""},
		{"a.test=1.2.3.4:5", ""}, {"a.test:443=1.2.3.4", ""}, {"a.test:0=1.2.3.4:5", ""},
		{"a.test:65536=1.2.3.4:5", ""}, {":443=1.2.3.4:5", ""}, {"a.test:443", ""},
		{"a.test:443==1.2.3.4:5", ""}, {"[::1]:443=1.2.3.4:5", "a:b:443=1.2.3.4:5"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, e1, e2 string) {
		m, err := parseResolve([]string{e1, e2})
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(e1)) && !strings.Contains(err.Error(), strconv.Quote(e2)) {
				t.Fatalf("parseResolve(%q, %q): error %q quotes neither value", e1, e2, err)
			}
			return
		}
		want := map[string]string{}
		for _, e := range []string{e1, e2} {
			from, to, _ := strings.Cut(e, "=")
			if !fuzzHostPort(from) || !fuzzHostPort(to) {
				t.Fatalf("parseResolve(%q, %q) accepted %q; want HOST:PORT=IP:PORT", e1, e2, e)
			}
			want[strings.ToLower(from)] = to
		}
		if len(m) != len(want) {
			t.Fatalf("parseResolve(%q, %q) = %v, want %v", e1, e2, m, want)
		}
		for from, to := range want {
			if m[from] != to {
				t.Fatalf("parseResolve(%q, %q) = %v, want %v", e1, e2, m, want)
			}
		}
	})
}

// fuzzHostPort reports whether s is HOST:PORT with a port of 1 to 65535.
//
// It insists on the form the dialer looks up (net.JoinHostPort(host,
// strconv.Itoa(port))): "h:0443", "h:+443" and "[h]:443" would be entries
// that no dial ever matches.
func fuzzHostPort(s string) bool {
	h, p, err := net.SplitHostPort(s)
	n, perr := strconv.Atoi(p)
	return err == nil && h != "" && !strings.ContainsAny(h, " \t") && perr == nil && n >= 1 && n <= 65535 &&
		net.JoinHostPort(h, strconv.Itoa(n)) == s
}

// TestResolveKeysInDialForm is a regression for what FuzzParseResolve
// found: entries whose key no dial ever matches are refused.
func TestResolveKeysInDialForm(t *testing.T) {
	for _, e := range []string{"registry.test:0443=127.0.0.1:8443", "registry.test:+443=127.0.0.1:8443", "[registry.test]:443=127.0.0.1:8443", "a b:443=127.0.0.1:8443"} {
		if _, err := parseResolve([]string{e}); err == nil {
			t.Errorf("parseResolve(%q) accepted a key no dial looks up", e)
		}
	}
	if _, err := parseResolve([]string{"registry.test:443=127.0.0.1:8443", "[::1]:443=[::1]:8443"}); err != nil {
		t.Errorf("parseResolve of canonical entries: %v", err)
	}
}
