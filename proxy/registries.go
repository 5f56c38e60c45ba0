package proxy

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/regproxy/regproxy/internal/dockerhub"
)

// CheckRegistries validates allow-list entries ("host" or "host:port")
// the way New does, so that a command line can be checked before anything
// touches the disk.
func CheckRegistries(entries []string) error {
	_, err := parseAllowList(entries)
	return err
}

// canonicalRepo names a repository the same way whichever alias a client
// used, for cache keys: Docker Hub's API hosts become registry-1.docker.io,
// and its one-component names get their implicit "library/" (docker.io/alpine
// is registry-1.docker.io/v2/library/alpine).
func canonicalRepo(target, name string) (registry, repo string) {
	host, port, err := net.SplitHostPort(strings.ToLower(target))
	if err != nil || !dockerhub.IsAPIHost(host) {
		return strings.ToLower(target), name
	}
	if !strings.Contains(name, "/") {
		name = "library/" + name
	}
	return net.JoinHostPort(dockerhub.Registry, port), name
}

// allowList decides which CONNECT targets are intercepted.
type allowList struct {
	anyPort map[string]bool // host → intercepted on every port
	exact   map[string]bool // host:port → intercepted on that port
}

// parseAllowList reads registry entries: "host" (any port) or "host:port".
func parseAllowList(entries []string) (*allowList, error) {
	a := &allowList{anyPort: map[string]bool{}, exact: map[string]bool{}}
	for _, e := range entries {
		e = strings.ToLower(strings.TrimSpace(e))
		if e == "" {
			continue
		}
		if err := a.add(e); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func (a *allowList) add(e string) error {
	host, port, err := net.SplitHostPort(e)
	if err != nil {
		if !validHost(e) {
			return fmt.Errorf("registry %q: not a host name", e)
		}
		a.anyPort[e] = true
		if e == dockerhub.Name { // Docker Hub serves from several hosts
			for _, h := range dockerhub.Hosts() {
				a.anyPort[h] = true
			}
		}
		return nil
	}
	if !validHost(host) || !validPort(port) {
		return fmt.Errorf("registry %q: want host or host:port", e)
	}
	a.exact[net.JoinHostPort(host, port)] = true
	return nil
}

// Intercepts reports whether target ("host:port") is on the list.
func (a *allowList) Intercepts(target string) bool {
	host, _, err := net.SplitHostPort(strings.ToLower(target))
	if err != nil {
		return false
	}
	return a.anyPort[host] || a.exact[strings.ToLower(target)]
}

// validHost accepts DNS names (letters, digits, hyphens, dots) and IP
// literals.
func validHost(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	if net.ParseIP(h) != nil {
		return true
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n > 0 && n < 65536 && strconv.Itoa(n) == p
}

// splitTarget validates a CONNECT target, which must be host:port.
func splitTarget(target string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(target)
	if err != nil {
		return "", "", fmt.Errorf("CONNECT target %q: want host:port", target)
	}
	if !validHost(host) || !validPort(port) {
		return "", "", fmt.Errorf("CONNECT target %q: bad host or port", target)
	}
	return host, port, nil
}

// RegistryHosts returns the hosts, without ports, that allow-list entries
// intercept, each once and in no set order, with "docker.io" standing for
// all of dockerhub.Hosts: the names a CA for regproxy must be able to sign
// for. Entries that fail CheckRegistries yield nil.
func RegistryHosts(entries []string) []string {
	a, err := parseAllowList(entries)
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	for host := range a.anyPort {
		seen[host] = true
	}
	for target := range a.exact {
		host, _, _ := net.SplitHostPort(target)
		seen[host] = true
	}
	hosts := make([]string, 0, len(seen))
	for host := range seen {
		hosts = append(hosts, host)
	}
	return hosts
}
