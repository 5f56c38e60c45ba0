package upstreamauth

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseChallenges(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		values []string
		want   []challenge
	}{
		{"docker hub", []string{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`},
			[]challenge{{"bearer", map[string]string{"realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "repository:library/alpine:pull"}}}},
		{"basic", []string{`Basic realm="Registry Realm"`},
			[]challenge{{"basic", map[string]string{"realm": "Registry Realm"}}}},
		{"two in one value, spaces, escapes", []string{`Basic realm="a\"b" , BEARER Realm = https://x/t , Service="s"`},
			[]challenge{{"basic", map[string]string{"realm": `a"b`}}, {"bearer", map[string]string{"realm": "https://x/t", "service": "s"}}}},
		{"two values", []string{`Basic realm="r"`, `Bearer realm="https://x/t"`},
			[]challenge{{"basic", map[string]string{"realm": "r"}}, {"bearer", map[string]string{"realm": "https://x/t"}}}},
		{"unterminated quote", []string{`Bearer realm="https://x`},
			[]challenge{{"bearer", map[string]string{"realm": "https://x"}}}},
		{"garbage", []string{`=x, "y"`}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := parseChallenges(tt.values); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPickChallenge(t *testing.T) {
	t.Parallel()
	chs := parseChallenges([]string{`Basic realm="r", Bearer service="no realm", Bearer realm="https://x/t"`})
	if got, ok := pickChallenge(chs); !ok || got.params["realm"] != "https://x/t" {
		t.Errorf("got %v, %v; want the Bearer with a realm", got, ok)
	}
	if got, ok := pickChallenge(chs[:2]); !ok || got.scheme != "basic" {
		t.Errorf("got %v, %v; want Basic", got, ok)
	}
	if _, ok := pickChallenge(parseChallenges([]string{`Negotiate`})); ok {
		t.Errorf("picked a challenge we cannot answer")
	}
}

func TestParseToken(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name, body string
		wantTok    string
		wantUntil  time.Duration // after now
		wantErr    bool
	}{
		{"token", `{"token":"t1","expires_in":300}`, "t1", 270 * time.Second, false},
		{"access_token", `{"access_token":"t2","expires_in":100}`, "t2", 90 * time.Second, false},
		{"token wins", `{"token":"t1","access_token":"t2","expires_in":100}`, "t1", 90 * time.Second, false},
		{"no expires_in", `{"token":"t1"}`, "t1", 54 * time.Second, false},
		{"zero expires_in", `{"token":"t1","expires_in":0}`, "t1", 54 * time.Second, false},
		{"issued earlier", `{"token":"t1","expires_in":300,"issued_at":"2025-01-01T11:59:00Z"}`, "t1", 210 * time.Second, false},
		{"issued in the future", `{"token":"t1","expires_in":300,"issued_at":"2025-01-01T13:00:00Z"}`, "t1", 270 * time.Second, false},
		{"issued long ago", `{"token":"t1","expires_in":300,"issued_at":"2024-01-01T00:00:00Z"}`, "t1", 270 * time.Second, false},
		{"no token", `{"expires_in":300}`, "", 0, true},
		{"token with newline", `{"token":"a\nb"}`, "", 0, true},
		{"not JSON", `<html>`, "", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok, until, err := parseToken(strings.NewReader(tt.body), now)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (tok != tt.wantTok || until.Sub(now) != tt.wantUntil) {
				t.Errorf("got %q until +%v, want %q until +%v", tok, until.Sub(now), tt.wantTok, tt.wantUntil)
			}
		})
	}
}

func TestCheckRealm(t *testing.T) {
	t.Parallel()
	tests := []struct {
		realm, registry string
		ok              bool
	}{
		{"https://auth.docker.io/token", "registry-1.docker.io:443", true},
		{"http://reg.local:5001/token", "reg.local:5000", true},
		{"http://REG.local/token", "reg.local", true},
		{"http://auth.example/token", "reg.local:443", false},
		{"ftp://reg.local/token", "reg.local:443", false},
		{"/token", "reg.local:443", false},
		{"https://", "reg.local:443", false},
	}
	for _, tt := range tests {
		u, err := checkRealm(tt.realm, tt.registry)
		if (err == nil) != tt.ok {
			t.Errorf("checkRealm(%q, %q) = %v, %v; want ok %v", tt.realm, tt.registry, u, err, tt.ok)
		}
	}
	if u, err := checkRealm("https://me:pw@auth.example/token#x", "reg:443"); err != nil || u.String() != "https://auth.example/token" {
		t.Errorf("got %v, %v; want user info and fragment dropped", u, err)
	}
}
