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

func TestLoadFlagFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		content string // "-" means no file
		want    upstreamauth.Keyring
		wantErr []string // substrings of the error, beside the file's name
	}{
		{"entries, comments, blank lines, CRLF",
			"# regproxy credentials\n\nghcr.io=bob:p:w=#1\r\n  quay.io=carol:pw2  \n\t# quay.io=nobody:x\n",
			upstreamauth.Keyring{"ghcr.io": {"bob", "p:w=#1"}, "quay.io": {"carol", "pw2"}}, nil},
		{"later wins", "QUAY.io=a:1\nquay.io=b:2\n", upstreamauth.Keyring{"quay.io": {"b", "2"}}, nil},
		{"missing file", "-", nil, []string{"no such file"}},
		{"no entry", "# nothing yet\n\n", nil, []string{"no HOST=USER:PASSWORD"}},
		{"no '='", "ghcr.io=bob:pw\n# fine\nghcr.io bob secretpw\n", nil, []string{"line 3", "want HOST=USER:PASSWORD"}},
		{"AUTH_REGISTRIES format", "ghcr.io:bob:secretpw==\n", nil, []string{"line 1", "not host[:port]"}},
		{"empty password", "\nghcr.io=bob:\n", nil, []string{"line 2", "ghcr.io", "empty password"}},
		{"user info", "me:secretpw@ghcr.io=bob:pw\n", nil, []string{"line 1", "user info"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "registries")
			if tt.content != "-" {
				if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := upstreamauth.LoadFlagFile(path)
			if tt.wantErr == nil {
				if err != nil || !reflect.DeepEqual(got, tt.want) {
					t.Errorf("got %v, %v; want %v", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %v, want an error", got)
			}
			for _, want := range append(tt.wantErr, path) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if strings.Contains(err.Error(), "secretpw") {
				t.Errorf("error %q reveals the password", err)
			}
			if tt.content == "-" && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("error %v is not fs.ErrNotExist", err)
			}
		})
	}
}
