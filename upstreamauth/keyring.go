// Package upstreamauth owns the credentials that regproxy itself presents
// upstream, so that anonymous cluster nodes can pull private or paid-account
// images and stay clear of anonymous rate limits. It parses them (flags, the
// AUTH_REGISTRIES variable of rpardini/docker-registry-proxy, a docker
// config.json) into a Keyring, and Transport adds them to upstream requests
// that carry none, running the registry token handshake when asked to.
//
// It does not decide who may use the proxy: anyone who can pull through
// regproxy can pull whatever the configured accounts can. It does not run
// docker credential helpers, and it never logs credentials or tokens.
package upstreamauth

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
)

// Credentials are a user name and password (or access token) for one
// registry. They are sent as HTTP Basic auth, to the registry itself or to
// its token server.
type Credentials struct{ Username, Password string }

// Keyring maps a registry host ("host" or "host:port", lowercase) to
// credentials.
type Keyring map[string]Credentials

// dockerHubAliases are the names under which Docker Hub credentials are
// found, in order of preference. "https://index.docker.io/v1/" is how docker
// login stores them; "auth.docker.io" is how AUTH_REGISTRIES names them (the
// nginx proxy adds them where the token is fetched).
var dockerHubAliases = []string{
	"registry-1.docker.io", "index.docker.io", "docker.io",
	"https://index.docker.io/v1/", "auth.docker.io",
}

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
// lowercase host[:port], nothing else. Its errors quote the input only when
// it cannot hold a secret: "user:pass@host" is not echoed.
func normalizeHost(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if strings.ContainsAny(s, "@ \t") {
		return "", errors.New("registry host is not host[:port] (user info or spaces)")
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", fmt.Errorf("registry URL %q does not parse", s)
		}
		s = u.Host
	} else if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	switch {
	case s == "":
		return "", errors.New("empty registry host")
	case strings.ContainsAny(s, "?#"):
		return "", fmt.Errorf("registry host %q is not host[:port]", s)
	}
	return s, nil
}
