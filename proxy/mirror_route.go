package proxy

import (
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/regproxy/regproxy/internal/dockerhub"
)

// mirrorRoute is what a request to the mirror port names: the upstream
// registry and the path that registry is asked for. parseMirror makes it.
type mirrorRoute struct {
	// registry is the registry as the client named it, lowercase:
	// "docker.io" when it named none.
	registry string
	// target is the host:port regproxy connects to, as a CONNECT would
	// name it: Docker Hub's API hosts are registry-1.docker.io, and a
	// registry without a port is on 443.
	target string
	// path is the request's path upstream, "/v2/…".
	path string
	// prefix is what the client put between "/v2" and the repository
	// name ("/quay.io"), "" unless it named the registry that way.
	prefix string
	// ns is set when the client named the registry with ?ns=.
	ns bool
	// rawQuery is the client's query without ns, for upstream.
	rawQuery string
}

// parseMirror reads which registry a mirror request is for, in the three
// ways mirror clients name it:
//
//  1. ?ns=REGISTRY on every request: containerd, for a hosts.toml mirror
//     (also under _default); the path is the registry's own.
//  2. A first path element that is a registry host, "/v2/quay.io/org/app/…":
//     a registries.conf mirror with location "MIRROR/quay.io" (podman,
//     CRI-O). The element counts as a host as it does in an image
//     reference (distribution/reference's splitDockerDomain): it holds a
//     '.' or a ':', or is "localhost". Docker Hub's names never do.
//  3. Neither: Docker Hub, the only registry dockerd's registry-mirrors
//     applies to. A one-element name gets Hub's implicit "library/".
//
// Dot segments and escaped slashes are refused as on intercepted
// connections (checkSegments), before anything is cut from the path.
func parseMirror(r *http.Request) (mirrorRoute, error) {
	if err := checkSegments(r); err != nil {
		return mirrorRoute{}, err
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v2/")
	if !ok && r.URL.Path != "/v2" {
		return mirrorRoute{}, &regError{Status: http.StatusNotFound, Code: "UNSUPPORTED",
			Message: "the mirror serves the registry API only, under /v2/"}
	}
	q := r.URL.Query()
	m := mirrorRoute{registry: dockerhub.Name, path: r.URL.Path, rawQuery: r.URL.RawQuery}
	switch ns := q["ns"]; {
	case len(ns) > 1:
		return mirrorRoute{}, errRegistryInvalid("more than one ns parameter")
	case len(ns) == 1:
		q.Del("ns")
		m.registry, m.ns, m.rawQuery = strings.ToLower(ns[0]), true, q.Encode()
	default:
		if first, after, _ := strings.Cut(rest, "/"); isRegistryHost(first) {
			m.registry, m.prefix, m.path = strings.ToLower(first), "/"+first, "/v2/"+after
		}
	}
	var err error
	if m.target, err = mirrorTarget(m.registry); err != nil {
		return mirrorRoute{}, err
	}
	if host, _, _ := net.SplitHostPort(m.target); host == dockerhub.Registry {
		m.path = withLibrary(m.path)
	}
	return m, nil
}

// isRegistryHost reports whether the first element of a repository name
// is a registry host, as an image reference reads it.
func isRegistryHost(first string) bool {
	return strings.ContainsAny(first, ".:") || first == "localhost"
}

// mirrorTarget is the host:port for registry ("host" or "host:port"), with
// every Docker Hub API host mapped to Hub's registry API, as canonicalRepo
// names it.
func mirrorTarget(registry string) (string, error) {
	host, port, err := net.SplitHostPort(registry)
	if err != nil {
		host, port = registry, "443"
	}
	if !validHost(host) || !validPort(port) {
		return "", errRegistryInvalid("not a registry host[:port]: " + registry)
	}
	if dockerhub.IsAPIHost(host) {
		host = dockerhub.Registry
	}
	return net.JoinHostPort(host, port), nil
}

// withLibrary gives a one-element Docker Hub repository name in path its
// implicit "library/" ("/v2/alpine/manifests/3" asks for library/alpine),
// which clients that speak to Hub itself always add.
func withLibrary(path string) string {
	rest, _ := strings.CutPrefix(path, "/v2/")
	kind, name, _ := describeRepoPath(rest)
	if kind == "" || strings.Contains(name, "/") || checkName(name) != nil {
		return path
	}
	return "/v2/library/" + rest
}

func errRegistryInvalid(msg string) *regError {
	return &regError{Status: http.StatusBadRequest, Code: "NAME_INVALID", Message: msg}
}

// request is r as an intercepted connection to m.target would carry it:
// the target in its context (targetOf), the registry's own path and
// query, and a Host header naming the target, as the client would have
// sent it to the registry directly (no port for 443).
func (m mirrorRoute) request(r *http.Request) *http.Request {
	out := r.WithContext(withTarget(r.Context(), m.target))
	u := *r.URL
	u.Path, u.RawPath, u.RawQuery = m.path, "", m.rawQuery
	out.URL = &u
	out.RequestURI = u.RequestURI()
	out.Host = m.target
	if host, port, _ := net.SplitHostPort(m.target); port == "443" {
		out.Host = host
	}
	return out
}

// clientLink rewrites a link upstream sent (a tag list's Link header,
// RFC 8288), "</v2/NAME/tags/list?last=x>; rel=\"next\"", into the one
// this client follows to the same page through the mirror: with its path
// prefix or its ns parameter. Links that are not relative /v2/ paths are
// left as they are.
func (m mirrorRoute) clientLink(link string) string {
	start, end := strings.IndexByte(link, '<'), strings.IndexByte(link, '>')
	if start < 0 || end < start {
		return link
	}
	u, err := url.Parse(link[start+1 : end])
	if err != nil || u.Host != "" || !strings.HasPrefix(u.Path, "/v2/") {
		return link
	}
	u.Path = "/v2" + m.prefix + u.Path[len("/v2"):]
	if m.ns {
		q := u.Query()
		q.Set("ns", m.registry)
		u.RawQuery = q.Encode()
	}
	return link[:start+1] + u.String() + link[end:]
}
