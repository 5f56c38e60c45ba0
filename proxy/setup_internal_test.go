package proxy

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

// fakeScripts is a set of setup scripts with the layout setup.go expects:
// a lib with the two served_ lines, and clients that source it.
func fakeScripts() fstest.MapFS {
	fsys := fstest.MapFS{
		setupLib: {Data: []byte("#!/bin/sh\n# lib\nserved_proxy=\nserved_registries=\nlib_code\n")},
	}
	for _, c := range setupClients {
		fsys["setup-"+c+".sh"] = &fstest.MapFile{Data: []byte("#!/bin/sh\nprog=" + c + "\n" + setupSourceLine + "\nmain \"$@\"\n")}
	}
	return fsys
}

func TestSetupAssembly(t *testing.T) {
	t.Parallel()
	pages, err := newSetupPages(fakeScripts(), []string{"docker.io", " Quay.io ", "registry.test:5000"})
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{setup: pages}
	r := httptest.NewRequest("GET", "http://proxy.test:3128/setup/podman", nil)
	w := httptest.NewRecorder()
	p.serveSetup(w, r)
	want := "#!/bin/sh\n" +
		"# Served by regproxy at /setup/podman: scripts/setup-podman.sh with scripts/setup-lib.sh inlined.\n" +
		"prog=podman\n" +
		"# ---- setup-lib.sh, inlined by regproxy ----\n" +
		"# lib\n" +
		"served_proxy='http://proxy.test:3128/'\n" +
		"served_registries='docker.io quay.io registry.test:5000'\n" +
		"lib_code\n" +
		"# ---- end of setup-lib.sh ----\n" +
		"main \"$@\"\n"
	if got := w.Body.String(); w.Code != http.StatusOK || got != want {
		t.Errorf("GET /setup/podman: %d\n%s\nwant 200 and:\n%s", w.Code, got, want)
	}
}

// TestSetupHost checks which Host headers become the served script's
// default proxy: a host and port, never anything that sh would read as
// more than a word.
func TestSetupHost(t *testing.T) {
	t.Parallel()
	pages, err := newSetupPages(fakeScripts(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{setup: pages}
	for _, tc := range []struct{ host, want string }{
		{"proxy.test:3128", "served_proxy='http://proxy.test:3128/'\n"},
		{"10.0.0.5:3128", "served_proxy='http://10.0.0.5:3128/'\n"},
		{"[fd00::5]:3128", "served_proxy='http://[fd00::5]:3128/'\n"},
		{"proxy.test", "served_proxy='http://proxy.test/'\n"},
		{"proxy.test:3128'$(id)'", "served_proxy=\n"},
		{"proxy.test:3128 x", "served_proxy=\n"},
		{"-proxy.test", "served_proxy=\n"},
		{"", "served_proxy=\n"},
	} {
		r := httptest.NewRequest("GET", "/setup/docker", nil)
		r.Host = tc.host
		w := httptest.NewRecorder()
		p.serveSetup(w, r)
		if !strings.Contains(w.Body.String(), "\n"+tc.want) {
			t.Errorf("Host %q: script without line %q:\n%s", tc.host, tc.want, w.Body)
		}
	}
}

func TestSetupPages(t *testing.T) {
	t.Parallel()
	pages, err := newSetupPages(fakeScripts(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		pages setupPages
		path  string
		code  int
		want  string // what the body must contain
	}{
		{"script", pages, "/setup/enroot", 200, "prog=enroot"},
		{"index", pages, "/setup/", 200, "curl -fsS http://proxy.test:3128/setup/containerd | sh -s -- --ca-sha256 " + pemCA.fingerprint},
		{"unknown client", pages, "/setup/crio", 404, "not found"},
		{"script name", pages, "/setup/setup-docker.sh", 404, "not found"},
		{"lib", pages, "/setup/lib", 404, "not found"},
		{"nested", pages, "/setup/docker/x", 404, "not found"},
		{"no scripts", setupPages{}, "/setup/docker", 404, "not found"},
		{"other page", pages, "/nope", 404, "not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := &Proxy{setup: tc.pages, ca: pemCA}
			w := httptest.NewRecorder()
			p.serveSetup(w, httptest.NewRequest("GET", "http://proxy.test:3128"+tc.path, nil))
			if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.want) {
				t.Errorf("GET %s: %d\n%s\nwant %d with %q", tc.path, w.Code, w.Body, tc.code, tc.want)
			}
		})
	}
}

// TestSetupLayout checks that a set of scripts without the layout
// setup.go relies on stops the proxy at start, naming what is wrong.
func TestSetupLayout(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		spoil func(fstest.MapFS)
		want  string
	}{
		{"no lib", func(f fstest.MapFS) { delete(f, setupLib) }, "setup-lib.sh"},
		{"no client", func(f fstest.MapFS) { delete(f, "setup-enroot.sh") }, "setup-enroot.sh"},
		{"no source line", func(f fstest.MapFS) { f["setup-docker.sh"].Data = []byte("#!/bin/sh\n. ./setup-lib.sh\n") },
			`setup-docker.sh: no line ". \"$(dirname \"$0\")/setup-lib.sh\""`},
		{"two source lines", func(f fstest.MapFS) {
			f["setup-podman.sh"].Data = []byte("#!/bin/sh\n" + setupSourceLine + "\n" + setupSourceLine + "\n")
		}, "appears twice"},
		{"no proxy line", func(f fstest.MapFS) { f[setupLib].Data = []byte("#!/bin/sh\nserved_registries=\n") }, `0 lines "served_proxy=", want 1`},
		{"two proxy lines", func(f fstest.MapFS) {
			f[setupLib].Data = []byte("#!/bin/sh\nserved_proxy=\nserved_registries=\nserved_proxy=\n")
		}, `2 lines "served_proxy=", want 1`},
		{"no registries line", func(f fstest.MapFS) { f[setupLib].Data = []byte("#!/bin/sh\nserved_proxy=\n") }, `no line "served_registries="`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fsys := fakeScripts()
			tc.spoil(fsys)
			if _, err := newSetupPages(fsys, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("newSetupPages: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// pemCA is a CertSource that has a certificate to show and mints nothing:
// the setup pages only print its fingerprint.
var pemCA = func() staticCA {
	der := []byte("not really DER, but hashed all the same")
	sum := sha256.Sum256(der)
	return staticCA{pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), fingerprint: hex.EncodeToString(sum[:])}
}()

type staticCA struct {
	pem         []byte
	fingerprint string // what the pages must show
}

func (c staticCA) CertPEM() []byte { return c.pem }

func (staticCA) Leaf(string) (*tls.Certificate, error) {
	return nil, errors.New("staticCA mints nothing")
}
