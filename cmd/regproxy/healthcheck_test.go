package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHealthcheck runs the healthcheck command, in-process, against
// servers that answer well and badly, and against a port where nothing
// listens: exit 0 and no output for a 200 within the timeout, exit 1 and
// one line on stderr for anything else, exit 2 for a bad flag.
func TestHealthcheck(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/down", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) })
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/healthz", http.StatusFound) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	dead := deadAddr(t)
	silent := silentAddr(t)

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string // what the one line on stderr contains; "" for none
	}{
		{"healthy", []string{"--url", srv.URL + "/healthz"}, 0, ""},
		{"healthy by --listen", []string{"--listen", ":" + port}, 0, ""},
		{"healthy by --listen with host", []string{"--listen", "127.0.0.1:" + port}, 0, ""},
		{"503", []string{"--url", srv.URL + "/down"}, 1, "503 Service Unavailable, want 200 OK"},
		{"redirect not followed", []string{"--url", srv.URL + "/moved"}, 1, "302 Found"},
		{"404", []string{"--url", srv.URL + "/nothing"}, 1, "404"},
		{"dead port", []string{"--url", "http://" + dead + "/healthz"}, 1, "connection refused"},
		{"dead port by --listen", []string{"--listen", dead}, 1, "http://" + dead + "/healthz"},
		{"timeout", []string{"--url", "http://" + silent + "/healthz", "--timeout", "300ms"}, 1, "no answer within the timeout"},
		{"bad url", []string{"--url", "127.0.0.1:3128/healthz"}, 2, "--url"},
		{"bad listen", []string{"--listen", "bogus"}, 2, "--listen"},
		{"bad timeout", []string{"--timeout", "soon"}, 2, "--timeout"},
		{"stray argument", []string{"http://127.0.0.1:3128/healthz"}, 2, "unexpected argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append([]string{"healthcheck"}, tc.args...)...)
			if code != tc.code || stdout != "" {
				t.Errorf("exit code %d, stdout %q; want %d and empty (stderr %q)", code, stdout, tc.code, stderr)
			}
			switch lines := strings.Count(stderr, "\n"); {
			case tc.want == "" && stderr != "":
				t.Errorf("stderr = %q, want empty", stderr)
			case tc.want != "" && (lines != 1 || !strings.Contains(stderr, tc.want)):
				t.Errorf("stderr = %q, want one line containing %q", stderr, tc.want)
			}
		})
	}
}

// TestHealthcheckListenFromEnv checks that the health check follows
// REGPROXY_LISTEN, which moves serve's port, so that a container's
// HEALTHCHECK needs no change when its port does. t.Setenv forbids
// t.Parallel.
func TestHealthcheckListenFromEnv(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	t.Setenv("REGPROXY_LISTEN", ":"+port)
	if code, _, stderr := runCLI(t, "healthcheck"); code != 0 {
		t.Errorf("healthcheck with REGPROXY_LISTEN=:%s: exit code %d, stderr %q; want 0", port, code, stderr)
	}
}

// deadAddr returns a loopback address where nothing listens: one that
// was listening a moment ago.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// silentAddr returns a loopback address that accepts connections (the
// kernel completes the handshake into the backlog) and never answers.
func silentAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}
