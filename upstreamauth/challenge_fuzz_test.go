package upstreamauth

import (
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// FuzzParseChallenges checks the WWW-Authenticate parser on any two field
// values. Its output is bounded by its input (every byte of a scheme, name
// or value comes from a distinct input byte), schemes and names are
// lowercase tokens, the challenges rebuilt in canonical form parse back to
// the same, and pickChallenge picks Bearer with a realm first, else Basic.
func FuzzParseChallenges(f *testing.F) {
	for _, v := range [][2]string{
		{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`, ""},
		{`Basic realm="Registry Realm"`, `Bearer realm=https://ghcr.io/token,service=ghcr.io`},
		{`Bearer realm="a\"b\\c", error="insufficient_scope"`, `Negotiate`},
		{`Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple"`, ""},
		{`Bearer`, `Bearer realm=""`}, {`Basic`, `basic`}, {`realm="orphan"`, `Bearer realm="unterminated`},
		{`Bearer realm = "x" , , service=y`, "\x00\xff"}, {`Basic YWxhZGRpbjpvcGVuc2VzYW1l==`, `,,,`},
		{`Bearer REALM="https://R", Realm="https://later"`, `B\u00e9arer realm=x`},
	} {
		f.Add(v[0], v[1])
	}
	f.Fuzz(func(t *testing.T, v1, v2 string) {
		chs := parseChallenges([]string{v1, v2})
		size := 0
		for _, ch := range chs {
			size += len(ch.scheme)
			if ch.scheme == "" || ch.scheme != strings.ToLower(ch.scheme) || !fuzzIsToken(ch.scheme) {
				t.Fatalf("%q %q: scheme %q is not a lowercase token", v1, v2, ch.scheme)
			}
			for name, value := range ch.params {
				size += len(name) + len(value)
				if name == "" || name != strings.ToLower(name) || !fuzzIsToken(name) {
					t.Fatalf("%q %q: parameter name %q is not a lowercase token", v1, v2, name)
				}
			}
		}
		if size > len(v1)+len(v2) {
			t.Fatalf("%q %q: %d bytes of challenges from %d of input", v1, v2, size, len(v1)+len(v2))
		}
		again := parseChallenges([]string{fuzzFormatChallenges(chs)})
		if len(chs) != len(again) || len(chs) > 0 && !reflect.DeepEqual(chs, again) {
			t.Fatalf("%q %q: parsed %v, rebuilt as %q, parsed again %v", v1, v2, chs, fuzzFormatChallenges(chs), again)
		}
		fuzzCheckPick(t, chs)
	})
}

// fuzzFormatChallenges writes challenges in canonical form: parameters sorted,
// every value a quoted-string (RFC 9110, section 5.6.4).
func fuzzFormatChallenges(chs []challenge) string {
	var b strings.Builder
	for i, ch := range chs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(ch.scheme)
		for j, name := range slices.Sorted(maps.Keys(ch.params)) {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(" " + name + `="`)
			b.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(ch.params[name]))
			b.WriteByte('"')
		}
	}
	return b.String()
}

// fuzzCheckPick checks pickChallenge against its rule.
func fuzzCheckPick(t *testing.T, chs []challenge) {
	t.Helper()
	want := -1
	for i, ch := range chs {
		if ch.scheme == "bearer" && ch.params["realm"] != "" {
			want = i
			break
		}
	}
	if want < 0 {
		want = slices.IndexFunc(chs, func(ch challenge) bool { return ch.scheme == "basic" })
	}
	got, ok := pickChallenge(chs)
	if ok != (want >= 0) || ok && !reflect.DeepEqual(got, chs[want]) {
		t.Fatalf("pickChallenge(%v) = %v, %v; want challenge %d", chs, got, ok, want)
	}
}

func fuzzIsToken(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return !isTchar(r) }) < 0
}
