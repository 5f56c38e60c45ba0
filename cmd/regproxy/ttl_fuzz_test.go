package main

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzParseTTLRule checks --manifest-ttl-rule on any text. Accepted, the
// rule's pattern is the text before the last "=", exactly, its TTL is what
// the text after it says and is not negative, and formatTTLRule writes a
// rule that parses back to the same pattern and TTL. Refused, the error
// quotes the value.
func FuzzParseTTLRule(f *testing.F) {
	for _, s := range []string{
		`:latest$=0`, `:v[0-9]=10d`, `^docker\.io/library/=90m`, `:v[0-9]{1,3}=1h`, `a=b=1h`, `(?i):LATEST$=0s`,
		`.*=1h30m`, `:latest$`, `=1h`, `(=1h`, `(?=x)=1h`, `x=`, `x=-1h`, `x=1.5d`, `x=0d`, `x=106751d`, `x=106752d`,
		`x=9223372036854775807ns`, "\xff=1h", `\=1h`, `x==1h`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := parseTTLRule(s)
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Fatalf("parseTTLRule(%q): error %q does not quote the value", s, err)
			}
			return
		}
		i := strings.LastIndexByte(s, '=')
		if r.Pattern.String() != s[:i] {
			t.Fatalf("parseTTLRule(%q): pattern %q; want %q", s, r.Pattern, s[:i])
		}
		ttl, err := parseRuleTTL(s[i+1:])
		if err != nil || ttl != r.TTL || r.TTL < 0 {
			t.Fatalf("parseTTLRule(%q): TTL %v; the duration alone reads as %v, %v", s, r.TTL, ttl, err)
		}
		back, err := parseTTLRule(formatTTLRule(r))
		if err != nil || back.Pattern.String() != r.Pattern.String() || back.TTL != r.TTL {
			t.Fatalf("parseTTLRule(%q) = %v; formatted as %q it reads back as %v, %v, %v",
				s, r, formatTTLRule(r), back.Pattern, back.TTL, err)
		}
	})
}
