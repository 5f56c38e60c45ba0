package upstreamauth_test

import (
	"encoding/base64"
	"encoding/json"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/regproxy/regproxy/upstreamauth"
)

// fuzzCheckKeyring checks what a parser accepted: every key is a lowercase
// host or host:port (the host a name of [a-z0-9._-] or an IP literal, the
// port 1 to 65535), every entry has a user and a password, and Lookup
// finds each entry under its own key.
func fuzzCheckKeyring(t *testing.T, in string, k upstreamauth.Keyring) {
	t.Helper()
	for key, c := range k {
		if !fuzzHostKey(key) {
			t.Fatalf("%q: accepted key %q; want lowercase host or host:port", in, key)
		}
		if c.Username == "" || c.Password == "" {
			t.Fatalf("%q: key %q has credentials %+v; want a user and a password", in, key, c)
		}
		if got, ok := k.Lookup(key); !ok || got != c {
			t.Fatalf("%q: Lookup(%q) = %+v, %v; want %+v", in, key, got, ok, c)
		}
	}
}

// fuzzHostKey reports whether key is a lowercase host or host:port.
//
// It insists on the form Lookup is asked for (net.JoinHostPort(host,
// strconv.Itoa(port)), IPv6 without brackets when there is no port):
// "h:05000", "h:+5000" and "[::1]" would be keys under which no request
// ever finds its credentials.
func fuzzHostKey(key string) bool {
	host := key
	if h, port, err := net.SplitHostPort(key); err == nil {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			return false
		}
		host = h
	} else if strings.HasPrefix(key, "[") {
		return false
	}
	if ip := strings.Trim(host, "[]"); strings.Contains(ip, ":") {
		return net.ParseIP(ip) != nil
	}
	return host != "" && strings.Trim(host, "abcdefghijklmnopqrstuvwxyz0123456789._-") == ""
}

// FuzzParseAuthRegistries checks AUTH_REGISTRIES parsing. An accepted
// value gives, for each host, the user and password of its last entry. An
// error does not depend on any password: with every password replaced, the
// message is the same, so it cannot quote one.
func FuzzParseAuthRegistries(f *testing.F) {
	for _, s := range []string{
		"auth.docker.io:bob:pw1  quay.io:carol:p:w=2", "quay.io:a:1 QUAY.IO:b:2", "localhost:5000:u:p",
		"https://ghcr.io/:u:p", "quay.io:bob", "quay.io:bob:", "quay.io::secretpw", ":bob:secretpw",
		"bob:secretpw", "quay.io:bob:secret\tpw", "user@host:u:p", "[::1]:u:p", "h/x:u:p", "\u212a8s.io:u:p",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := upstreamauth.ParseAuthRegistries(s)
		fields := strings.Fields(s)
		redacted := make([]string, len(fields))
		for i, entry := range fields {
			parts := strings.SplitN(entry, ":", 3)
			if len(parts) == 3 && parts[2] != "" {
				parts[2] = "REDACTED"
			}
			redacted[i] = strings.Join(parts, ":")
		}
		_, err2 := upstreamauth.ParseAuthRegistries(strings.Join(redacted, " "))
		if (err == nil) != (err2 == nil) || err != nil && err.Error() != err2.Error() {
			t.Fatalf("%q: error %v, but %v with the passwords replaced", s, err, err2)
		}
		if err != nil {
			return
		}
		fuzzCheckKeyring(t, s, k)
		want := upstreamauth.Keyring{}
		for _, entry := range fields {
			parts := strings.SplitN(entry, ":", 3)
			if strings.Contains(parts[0], "=") {
				return // ParseFlag, the cross-check, would read the host differently
			}
			host, c, err := upstreamauth.ParseFlag(parts[0] + "=" + parts[1] + ":" + parts[2])
			if err != nil {
				t.Fatalf("%q: accepted, but its entry %q fails as a flag: %v", s, entry, err)
			}
			want[host] = c
		}
		if len(want) != len(k) {
			t.Fatalf("%q: got %d hosts, want %d", s, len(k), len(want))
		}
		for host, c := range want {
			if k[host] != c {
				t.Fatalf("%q: host %q has %+v, want %+v", s, host, k[host], c)
			}
		}
	})
}

// FuzzLoadDockerConfig checks --auth-file on any file content: no panic,
// and what is accepted passes fuzzCheckKeyring.
func FuzzLoadDockerConfig(f *testing.F) {
	for _, s := range []string{
		`{"auths":{"https://index.docker.io/v1/":{"auth":"Ym9iOnB3"}}}`,
		`{"auths":{"ghcr.io":{"username":"bob","password":"pw"},"Quay.IO":{"auth":"Ym9iOnB3"}}}`,
		`{"auths":{"localhost:5000":{"auth":"Ym9iOnB3"},"localhost:5000/":{"auth":"Y2Fyb2w6cHc="}}}`,
		`{"auths":{"ghcr.io":{}},"credsStore":"desktop"}`, `{"auths":{"ghcr.io":{"auth":"Ym9iOnB3"}}}`,
		`{"auths":{"ghcr.io":{"auth":"!!"}}}`, `{"auths":{"ghcr.io":{"auth":"Ym9i"}}}`, `{"auths":{"":{"auth":"Ym9iOnB3"}}}`,
		`{"auths":{"a b":{"auth":"Ym9iOnB3"}}}`, `{"auths":{"ghcr.io":{"password":"only"}}}`, `{"auths":[]}`,
		`{"auths":{"ghcr.io":{"auth":5}}}`, `{}`, `null`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, content []byte) {
		path := filepath.Join(t.TempDir(), "config.json")
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := upstreamauth.LoadDockerConfig(path)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("%q: error %q does not name the file", content, err)
			}
			return
		}
		fuzzCheckKeyring(t, string(content), k)
	})
}

// FuzzDockerConfigSecret checks one "auths" entry of --auth-file, its
// credentials given as "auth" or as "username" and "password". Accepted,
// it gives its user and password; refused, its error is the same with
// another password, so it quotes neither the password nor the base64
// holding it.
func FuzzDockerConfigSecret(f *testing.F) {
	f.Add("ghcr.io", "bob", "p:w=d", true)
	f.Add("https://index.docker.io/v1/", "bob", "pw", false)
	f.Add("ghcr.io:user:secretpw", "bob", "secretpw", true)
	f.Add("ghcr.io", "", "secretpw", false)
	f.Add("ghcr.io", "bob:x", "secretpw", true)
	f.Add("secretpw@ghcr.io", "bob", "secretpw", true)
	f.Fuzz(func(t *testing.T, key, user, pass string, inAuth bool) {
		path := filepath.Join(t.TempDir(), "config.json")
		k, err := fuzzLoadEntry(t, path, key, user, pass, inAuth)
		if pass != "" {
			_, err2 := fuzzLoadEntry(t, path, key, user, "REDACTED", inAuth)
			if (err == nil) != (err2 == nil) || err != nil && err.Error() != err2.Error() {
				t.Fatalf("auths[%q] %q %q (auth %v): error %v, but %v with another password", key, user, pass, inAuth, err, err2)
			}
		}
		if err != nil {
			return
		}
		fuzzCheckKeyring(t, key, k)
		want := upstreamauth.Credentials{Username: user, Password: pass}
		if inAuth {
			want.Username, want.Password, _ = strings.Cut(user+":"+pass, ":")
		}
		switch {
		case !inAuth && want == (upstreamauth.Credentials{}):
			if len(k) != 0 {
				t.Fatalf("auths[%q] without credentials gave %v; want it skipped", key, k)
			}
		case len(k) != 1:
			t.Fatalf("auths[%q] %q %q (auth %v): %d entries, want 1", key, user, pass, inAuth, len(k))
		case utf8.ValidString(user+pass) && !slices.Contains(slices.Collect(maps.Values(k)), want):
			t.Fatalf("auths[%q] %q %q (auth %v): got %v, want %+v", key, user, pass, inAuth, k, want)
		}
	})
}

// fuzzLoadEntry writes a config with one "auths" entry to path and loads it.
func fuzzLoadEntry(t *testing.T, path, key, user, pass string, inAuth bool) (upstreamauth.Keyring, error) {
	t.Helper()
	entry := map[string]string{"username": user, "password": pass}
	if inAuth {
		entry = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))}
	}
	b, err := json.Marshal(map[string]any{"auths": map[string]any{key: entry}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return upstreamauth.LoadDockerConfig(path)
}
