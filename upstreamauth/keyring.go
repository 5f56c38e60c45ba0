// Package upstreamauth owns the credentials that regproxy itself presents
// upstream, so that anonymous cluster nodes can pull private or paid-account
// images and stay clear of anonymous rate limits. It parses them (flags and
// their @FILE form, the AUTH_REGISTRIES variable of
// rpardini/docker-registry-proxy, a docker config.json) into a Keyring, and
// Transport adds them to upstream pulls that carry none, running the
// registry token handshake when asked to.
//
// What they open, and to whom: pulls, to every client that can reach the
// proxy port. That is GET and HEAD of manifests, blobs and tag lists and
// the "/v2/" ping, with tokens asked for pull scopes only; mayUseConfigured
// states the rule. Pushes, uploads, deletes, the catalog and token
// requests never get them: they go upstream as the client sent them.
//
// It does not decide who may use the proxy: anyone who can pull through
// regproxy can pull whatever the configured accounts can. It does not run
// docker credential helpers, and it never logs credentials or tokens.
package upstreamauth

import (
	"errors"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/regproxy/regproxy/internal/dockerhub"
)

// Credentials are a user name and password (or access token) for one
// registry. They are sent as HTTP Basic auth, to the registry itself or to
// its token server.
type Credentials struct{ Username, Password string }

// none reports whether c holds no credentials: an anonymous token fetch.
func (c Credentials) none() bool { return c == Credentials{} }

// Keyring maps a registry host ("host" or "host:port", lowercase) to
// credentials.
type Keyring map[string]Credentials

// dockerHubAliases are the names under which Docker Hub credentials are
// found, in order of preference: its API hosts, then
// "https://index.docker.io/v1/", which is how docker login stores them, and
// its token host, which is how AUTH_REGISTRIES names them (the nginx proxy
// adds them where the token is fetched).
var dockerHubAliases = append(dockerhub.APIHosts(), "https://index.docker.io/v1/", dockerhub.TokenHost)

// Lookup finds credentials for a request host "host:port": exact
// "host:port" first, then "host" alone. Credentials stored under any Docker
// Hub alias ("docker.io", "index.docker.io", "registry-1.docker.io",
// "https://index.docker.io/v1/", "auth.docker.io") apply to all of them.
func (k Keyring) Lookup(hostport string) (Credentials, bool) {
	hostport = strings.ToLower(hostport)
	host := hostOf(hostport)
	candidates := []string{hostport, host}
	if isDockerHub(host) {
		candidates = append(candidates, dockerHubAliases...)
	}
	for _, c := range candidates {
		if cr, ok := k[c]; ok {
			return cr, true
		}
	}
	return Credentials{}, false
}

// Merge returns a Keyring with b's entries overriding a's. Neither input is
// modified; either may be nil.
func Merge(a, b Keyring) Keyring {
	out := make(Keyring, len(a)+len(b))
	for h, c := range a {
		out[h] = c
	}
	for h, c := range b {
		out[h] = c
	}
	return out
}

// hostOf returns hostport without its port, or hostport itself when it has
// none.
func hostOf(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

func isDockerHub(host string) bool {
	for _, a := range dockerHubAliases {
		if host == a {
			return true
		}
	}
	return false
}

// normalizeHost turns a registry name as people write it ("Ghcr.io",
// "https://index.docker.io/v1/", "localhost:5000/") into a Keyring key:
// lowercase host[:port], nothing else. Its errors never quote the input:
// a value in the wrong format ("host:user:password=", as in
// AUTH_REGISTRIES with a base64 password) puts a password where the host
// should be.
func normalizeHost(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if strings.ContainsAny(s, "@ \t") {
		return "", errors.New("registry host is not host[:port] (user info or spaces)")
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", errors.New("registry URL does not parse")
		}
		s = u.Host
	} else if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	switch {
	case s == "":
		return "", errors.New("empty registry host")
	case !isHostPort(s):
		return "", errors.New("registry host is not host[:port]")
	}
	return s, nil
}

// isHostPort reports whether s is a host name ([a-z0-9._-]) or an IP
// address, with an optional numeric port.
func isHostPort(s string) bool {
	host := s
	if h, port, err := net.SplitHostPort(s); err == nil {
		// Only the form Lookup is asked for: "h:05000" or "h:+5000" would
		// be keys under which no request ever finds its credentials.
		if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 || strconv.Itoa(n) != port {
			return false
		}
		host = h
	} else if strings.HasPrefix(s, "[") {
		return false // "[::1]" without a port: Lookup is asked for "::1"
	}
	if ip := strings.Trim(host, "[]"); strings.Contains(ip, ":") {
		return net.ParseIP(ip) != nil // IPv6; "host:user:pw" is not one
	}
	return host != "" && strings.IndexFunc(host, notHostRune) < 0
}

func notHostRune(r rune) bool {
	return !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '.' || r == '-' || r == '_')
}
