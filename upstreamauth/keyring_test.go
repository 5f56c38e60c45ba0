package upstreamauth_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/regproxy/regproxy/upstreamauth"
)

type creds = upstreamauth.Credentials

func TestParseFlag(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in       string
		wantHost string
		want     creds
		wantErr  bool
	}{
		{in: "ghcr.io=bob:hunter2", wantHost: "ghcr.io", want: creds{"bob", "hunter2"}},
		{in: "Registry.Example.com:5000=bob:a:b=c", wantHost: "registry.example.com:5000", want: creds{"bob", "a:b=c"}},
		{in: "https://index.docker.io/v1/=bob:pw", wantHost: "index.docker.io", want: creds{"bob", "pw"}},
		{in: "ghcr.io=bob:=", wantHost: "ghcr.io", want: creds{"bob", "="}},
		{in: "ghcr.io:bob:secretpw", wantErr: true},
		{in: "=bob:secretpw", wantErr: true},
		{in: "ghcr.io=bobsecretpw", wantErr: true},
		{in: "ghcr.io=:secretpw", wantErr: true},
		{in: "ghcr.io=bob:", wantErr: true},
		{in: "me:secretpw@ghcr.io=bob:pw", wantErr: true},
		{in: "ghcr.io:bob:secretpw==", wantErr: true}, // AUTH_REGISTRIES format, base64 password
		{in: "ghcr.io:secretpw=bob:pw", wantErr: true},
		{in: "[::1]:5000=bob:pw", wantHost: "[::1]:5000", want: creds{"bob", "pw"}},
		{in: "reg_1.local=bob:pw", wantHost: "reg_1.local", want: creds{"bob", "pw"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			host, c, err := upstreamauth.ParseFlag(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %q %+v, want an error", host, c)
				}
				if strings.Contains(err.Error(), "secretpw") {
					t.Errorf("error %q reveals the password", err)
				}
				return
			}
			if err != nil || host != tt.wantHost || c != tt.want {
				t.Errorf("got %q %+v %v, want %q %+v", host, c, err, tt.wantHost, tt.want)
			}
		})
	}
}

func TestParseAuthRegistries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    upstreamauth.Keyring
		wantErr bool
	}{
		{"empty", "  ", upstreamauth.Keyring{}, false},
		{"two entries", "auth.docker.io:bob:pw1  quay.io:carol:p:w=2",
			upstreamauth.Keyring{"auth.docker.io": {"bob", "pw1"}, "quay.io": {"carol", "p:w=2"}}, false},
		{"later wins", "quay.io:a:1 QUAY.IO:b:2", upstreamauth.Keyring{"quay.io": {"b", "2"}}, false},
		{"missing password", "quay.io:bob", nil, true},
		{"empty password", "quay.io:bob:", nil, true},
		{"empty user", "quay.io::secretpw", nil, true},
		{"empty host", ":bob:secretpw", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := upstreamauth.ParseAuthRegistries(tt.in)
			if (err != nil) != tt.wantErr || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, %v; want %v (error: %v)", got, err, tt.want, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "secretpw") {
				t.Errorf("error %q reveals the password", err)
			}
		})
	}
}

func TestLoadDockerConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		json    string // "" means no file
		want    upstreamauth.Keyring
		wantErr string // substring of the error; "" means none
	}{
		{"auth field", `{"auths":{"ghcr.io":{"auth":"Ym9iOnA6dz0="}}}`,
			upstreamauth.Keyring{"ghcr.io": {"bob", "p:w="}}, ""},
		{"unpadded auth field", `{"auths":{"ghcr.io":{"auth":"Ym9iOnB3"}}}`,
			upstreamauth.Keyring{"ghcr.io": {"bob", "pw"}}, ""},
		{"username and password fields", `{"auths":{"quay.io":{"username":"carol","password":"pw"}}}`,
			upstreamauth.Keyring{"quay.io": {"carol", "pw"}}, ""},
		{"auth wins over fields", `{"auths":{"quay.io":{"auth":"Ym9iOnB3","username":"carol","password":"x"}}}`,
			upstreamauth.Keyring{"quay.io": {"bob", "pw"}}, ""},
		{"URL keys", `{"auths":{"https://index.docker.io/v1/":{"auth":"Ym9iOnB3"},"http://LOCALHOST:5000":{"auth":"Ym9iOnB3"}}}`,
			upstreamauth.Keyring{"index.docker.io": {"bob", "pw"}, "localhost:5000": {"bob", "pw"}}, ""},
		{"credential helpers and empty entries ignored",
			`{"auths":{"ghcr.io":{}},"credsStore":"desktop","credHelpers":{"gcr.io":"gcloud"}}`,
			upstreamauth.Keyring{}, ""},
		{"bad base64", `{"auths":{"ghcr.io":{"auth":"not base64!"}}}`, nil, "not base64"},
		{"auth without colon", `{"auths":{"ghcr.io":{"auth":"Ym9i"}}}`, nil, "USER:PASSWORD"},
		{"bad JSON", `{"auths":`, nil, "config.json"},
		{"missing file", "", nil, "config.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "config.json")
			if tt.json != "" {
				if err := os.WriteFile(path, []byte(tt.json), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := upstreamauth.LoadDockerConfig(path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, %v; want an error with %q", got, err, tt.wantErr)
				}
				if tt.json == "" && !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("error %v is not fs.ErrNotExist", err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	t.Parallel()
	a, b := creds{"a", "1"}, creds{"b", "2"}
	tests := []struct {
		name  string
		keys  upstreamauth.Keyring
		query string
		want  creds
		ok    bool
	}{
		{"host:port exact", upstreamauth.Keyring{"reg.io:5000": a, "reg.io": b}, "reg.io:5000", a, true},
		{"host alone", upstreamauth.Keyring{"reg.io": b}, "reg.io:443", b, true},
		{"no port in query", upstreamauth.Keyring{"reg.io": b}, "reg.io", b, true},
		{"case", upstreamauth.Keyring{"reg.io": b}, "REG.io:443", b, true},
		{"other port", upstreamauth.Keyring{"reg.io:5000": a}, "reg.io:443", creds{}, false},
		{"unknown", upstreamauth.Keyring{"reg.io": a}, "ghcr.io:443", creds{}, false},
		{"docker.io", upstreamauth.Keyring{"docker.io": a}, "registry-1.docker.io:443", a, true},
		{"index.docker.io", upstreamauth.Keyring{"index.docker.io": a}, "registry-1.docker.io:443", a, true},
		{"docker login URL", upstreamauth.Keyring{"https://index.docker.io/v1/": a}, "registry-1.docker.io:443", a, true},
		{"AUTH_REGISTRIES name", upstreamauth.Keyring{"auth.docker.io": a}, "registry-1.docker.io:443", a, true},
		{"aliases both ways", upstreamauth.Keyring{"registry-1.docker.io": a}, "docker.io", a, true},
		{"exact alias wins", upstreamauth.Keyring{"docker.io": a, "index.docker.io": b}, "index.docker.io:443", b, true},
		{"not a hub alias", upstreamauth.Keyring{"docker.io": a}, "ghcr.io:443", creds{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := tt.keys.Lookup(tt.query)
			if got != tt.want || ok != tt.ok {
				t.Errorf("Lookup(%q) = %+v, %v; want %+v, %v", tt.query, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestMerge(t *testing.T) {
	t.Parallel()
	a := upstreamauth.Keyring{"x.io": {"a", "1"}, "y.io": {"a", "2"}}
	b := upstreamauth.Keyring{"y.io": {"b", "3"}}
	got := upstreamauth.Merge(a, b)
	want := upstreamauth.Keyring{"x.io": {"a", "1"}, "y.io": {"b", "3"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Merge = %v, want %v", got, want)
	}
	if a["y.io"].Username != "a" {
		t.Errorf("Merge modified its input")
	}
	if got := upstreamauth.Merge(nil, nil); got == nil || len(got) != 0 {
		t.Errorf("Merge(nil, nil) = %#v, want an empty Keyring", got)
	}
}

// FuzzParseFlag checks that a flag built from parts parses back into them,
// and that no error quotes the password.
func FuzzParseFlag(f *testing.F) {
	f.Add("ghcr.io", "bob", "p:w=d")
	f.Add("localhost:5000", "x", "=")
	f.Fuzz(func(t *testing.T, host, user, pass string) {
		h, c, err := upstreamauth.ParseFlag(host + "=" + user + ":" + pass)
		if err != nil {
			if len(pass) > 3 && !strings.Contains(host+user, pass) && strings.Contains(err.Error(), pass) {
				t.Fatalf("error %q quotes the password", err)
			}
			return
		}
		simple := !strings.ContainsAny(host, "=/:@ \t?#") && !strings.ContainsAny(user, ":") && host == strings.ToLower(strings.TrimSpace(host))
		if simple && (h != host || c.Username != user || c.Password != pass) {
			t.Fatalf("got %q %+v, want %q %q %q", h, c, host, user, pass)
		}
	})
}
