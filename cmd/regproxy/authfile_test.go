package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAuthRegistryFileErrors checks that a bad --auth-registry @FILE is a
// usage error that names the flag, the file and the line, and never shows
// a password. Not parallel: see runCLI.
func TestAuthRegistryFileErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "registries")
	// The second line is in AUTH_REGISTRIES format, with a base64-like
	// password: its '=' would make it read as HOST=… if the host were not
	// checked.
	if err := os.WriteFile(bad, []byte("ghcr.io=bob:pw\nquay.io:carol:s3cretpw==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"missing file", filepath.Join(dir, "absent"), []string{"absent"}},
		{"bad line", bad, []string{bad, "line 2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, serveArgs(t, "--auth-registry", "@"+tc.file)...)
			wantUsageError(t, "auth-registry", code, stdout, stderr)
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not say %q", stderr, w)
				}
			}
			if strings.Contains(stderr, "s3cretpw") {
				t.Errorf("stderr %q shows the password", stderr)
			}
		})
	}
}
