package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestParseMirror(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		URL                    string
		Registry, Target       string
		Path, Prefix, RawQuery string
		NS                     bool
		Host                   string // of the mapped request
	}{
		{"/v2/", "docker.io", "registry-1.docker.io:443", "/v2/", "", "", false, "registry-1.docker.io"},
		{"/v2/library/alpine/manifests/3", "docker.io", "registry-1.docker.io:443", "/v2/library/alpine/manifests/3", "", "", false, "registry-1.docker.io"},
		{"/v2/alpine/manifests/3", "docker.io", "registry-1.docker.io:443", "/v2/library/alpine/manifests/3", "", "", false, "registry-1.docker.io"},
		{"/v2/alpine/tags/list?n=5", "docker.io", "registry-1.docker.io:443", "/v2/library/alpine/tags/list", "", "n=5", false, "registry-1.docker.io"},
		{"/v2/quay.io/org/app/blobs/sha256:ab", "quay.io", "quay.io:443", "/v2/org/app/blobs/sha256:ab", "/quay.io", "", false, "quay.io"},
		{"/v2/localhost/app/manifests/v1", "localhost", "localhost:443", "/v2/app/manifests/v1", "/localhost", "", false, "localhost"},
		{"/v2/registry.test:5000/app/manifests/v1", "registry.test:5000", "registry.test:5000", "/v2/app/manifests/v1", "/registry.test:5000", "", false, "registry.test:5000"},
		{"/v2/docker.io/alpine/manifests/3", "docker.io", "registry-1.docker.io:443", "/v2/library/alpine/manifests/3", "/docker.io", "", false, "registry-1.docker.io"},
		{"/v2/index.docker.io/org/app/manifests/3", "index.docker.io", "registry-1.docker.io:443", "/v2/org/app/manifests/3", "/index.docker.io", "", false, "registry-1.docker.io"},
		{"/v2/Quay.IO/org/app/manifests/v1", "quay.io", "quay.io:443", "/v2/org/app/manifests/v1", "/Quay.IO", "", false, "quay.io"},
		{"/v2/quay.io/", "quay.io", "quay.io:443", "/v2/", "/quay.io", "", false, "quay.io"},
		{"/v2/org/app/manifests/v1?ns=ghcr.io", "ghcr.io", "ghcr.io:443", "/v2/org/app/manifests/v1", "", "", true, "ghcr.io"},
		{"/v2/org/app/manifests/v1?ns=Registry.Test:5000&x=1", "registry.test:5000", "registry.test:5000", "/v2/org/app/manifests/v1", "", "x=1", true, "registry.test:5000"},
		{"/v2/alpine/manifests/3?ns=docker.io", "docker.io", "registry-1.docker.io:443", "/v2/library/alpine/manifests/3", "", "", true, "registry-1.docker.io"},
		{"/v2/quay.io/org/app/manifests/v1?ns=ghcr.io", "ghcr.io", "ghcr.io:443", "/v2/quay.io/org/app/manifests/v1", "", "", true, "ghcr.io"},
		{"/v2?ns=quay.io", "quay.io", "quay.io:443", "/v2", "", "", true, "quay.io"},
	} {
		r := httptest.NewRequest("GET", tc.URL, nil)
		m, err := parseMirror(r)
		if err != nil {
			t.Errorf("%s: %v", tc.URL, err)
			continue
		}
		want := mirrorRoute{registry: tc.Registry, target: tc.Target, path: tc.Path, prefix: tc.Prefix, ns: tc.NS, rawQuery: tc.RawQuery}
		if m != want {
			t.Errorf("%s: %+v; want %+v", tc.URL, m, want)
		}
		out := m.request(r)
		if targetOf(out) != tc.Target || out.Host != tc.Host || out.URL.Path != tc.Path || out.URL.RawQuery != tc.RawQuery ||
			out.RequestURI != out.URL.RequestURI() || checkHost(out) != nil {
			t.Errorf("%s: mapped to target %q, Host %q, URL %q, RequestURI %q", tc.URL, targetOf(out), out.Host, out.URL, out.RequestURI)
		}
	}
}

func TestParseMirrorRefuses(t *testing.T) {
	t.Parallel()
	for _, u := range []string{
		"/", "/v1/", "/token", "/v2x/a",
		"/v2/a/manifests/v1?ns=a&ns=b",
		"/v2/a/manifests/v1?ns=",
		"/v2/a/manifests/v1?ns=a%20b",
		"/v2/a/manifests/v1?ns=host:0",
		"/v2/a/manifests/v1?ns=host:99999",
		"/v2/a/manifests/v1?ns=host:80:80",
		"/v2/bad..host/a/manifests/v1",
		"/v2/quay.io/../x/manifests/v1",
		"/v2/quay.io%2Forg/app/manifests/v1",
	} {
		r := httptest.NewRequest("GET", "http://mirror"+u, nil)
		if m, err := parseMirror(r); err == nil {
			t.Errorf("%s: %+v; want an error", u, m)
		} else if _, ok := err.(*regError); !ok {
			t.Errorf("%s: %T %v; want a *regError", u, err, err)
		}
	}
}

func TestClientLink(t *testing.T) {
	t.Parallel()
	prefix := mirrorRoute{registry: "quay.io", prefix: "/quay.io"}
	ns := mirrorRoute{registry: "registry.test:5000", ns: true}
	for _, tc := range []struct {
		Route      mirrorRoute
		Link, Want string
	}{
		{prefix, `</v2/org/app/tags/list?last=b&n=2>; rel="next"`, `</v2/quay.io/org/app/tags/list?last=b&n=2>; rel="next"`},
		{ns, `</v2/org/app/tags/list?last=b&n=2>; rel="next"`, `</v2/org/app/tags/list?last=b&n=2&ns=registry.test%3A5000>; rel="next"`},
		{prefix, `<https://quay.io/v2/org/app/tags/list?last=b>; rel="next"`, `<https://quay.io/v2/org/app/tags/list?last=b>; rel="next"`},
		{prefix, `</elsewhere>; rel="next"`, `</elsewhere>; rel="next"`},
		{prefix, `garbage`, `garbage`},
		{prefix, `>< nonsense`, `>< nonsense`},
	} {
		if got := tc.Route.clientLink(tc.Link); got != tc.Want {
			t.Errorf("clientLink(%s) with %+v = %s; want %s", tc.Link, tc.Route, got, tc.Want)
		}
	}
}

// FuzzParseMirror holds parseMirror to its contract: what it maps is a
// registry API path of a valid target, and a path prefix is cut off
// exactly (Docker Hub's "library/" aside).
func FuzzParseMirror(f *testing.F) {
	for _, s := range []string{"/v2/", "/v2/alpine/manifests/3", "/v2/quay.io/org/app/blobs/sha256:ab",
		"/v2/a/manifests/v1?ns=ghcr.io", "/v2/localhost:5000/a/tags/list?n=1", "/v2/docker.io/alpine/manifests/3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, u string) {
		r, err := http.NewRequest("GET", "http://mirror"+u, nil)
		if err != nil {
			return
		}
		m, err := parseMirror(r)
		if err != nil {
			return
		}
		if m.path != "/v2" && !strings.HasPrefix(m.path, "/v2/") {
			t.Fatalf("%q: path %q is not under /v2/", u, m.path)
		}
		if _, err := mirrorTarget(m.target); err != nil || !strings.Contains(m.target, ":") {
			t.Fatalf("%q: target %q: %v", u, m.target, err)
		}
		if m.prefix != "" && !m.ns {
			// "/v2/quay.io" is quay.io's ping, "/v2/".
			back := "/v2" + m.prefix + strings.TrimPrefix(m.path, "/v2")
			if back != r.URL.Path && back != r.URL.Path+"/" && strings.Replace(back, "/library/", "/", 1) != r.URL.Path {
				t.Fatalf("%q: prefix %q and path %q do not make the path back", u, m.prefix, m.path)
			}
		}
	})
}
