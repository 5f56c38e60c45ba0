package testupstream

import (
	"net"
	"net/http"
	"strings"
)

// Kind returns how r is counted: its method, a space, and one of "ping"
// (/v2/), "blob", "manifest", "tags", "upload" (/blobs/uploads/...) or
// "other". For example "GET blob" or "HEAD manifest". In hub mode (WithHub)
// every request to AuthHost is "token" and every request to CDNHost is
// "cdn", such as "GET token" or "HEAD cdn"; Kind tells them apart only for
// requests the Upstream passed to a Fault.
func Kind(r *http.Request) string {
	switch roleOf(r) {
	case roleAuth:
		return r.Method + " token"
	case roleCDN:
		return r.Method + " cdn"
	}
	return r.Method + " " + pathKind(r.URL.Path)
}

// pathKind classifies an OCI distribution path by its last elements, since
// repository names may hold any number of slashes
// (https://github.com/opencontainers/distribution-spec/blob/main/spec.md#endpoints).
func pathKind(path string) string {
	if path == "/v2" || path == "/v2/" {
		return "ping"
	}
	if !strings.HasPrefix(path, "/v2/") {
		return "other"
	}
	el := strings.Split(strings.TrimSuffix(path, "/"), "/")
	last := func(i int) string { // i-th element from the end, 1-based
		if len(el) < i+3 { // "", "v2" and a name element come first
			return ""
		}
		return el[len(el)-i]
	}
	switch {
	case last(1) == "uploads" && last(2) == "blobs",
		last(2) == "uploads" && last(3) == "blobs":
		return "upload"
	case last(2) == "blobs":
		return "blob"
	case last(2) == "manifests":
		return "manifest"
	case last(2) == "tags" && last(1) == "list":
		return "tags"
	}
	return "other"
}

func (u *Upstream) count(r *http.Request) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.kinds[Kind(r)]++
	u.paths[r.Method+" "+r.URL.Path]++
	u.hosts[hostName(r.Host)]++
	u.total++
	if roleOf(r) == roleCDN && r.Header.Get("Authorization") != "" {
		u.cdnAuth++
	}
}

// hostName returns host without its port.
func hostName(host string) string {
	if name, _, err := net.SplitHostPort(host); err == nil {
		return name
	}
	return host
}

// CountHost returns how many requests the upstream received for host, a
// bare name without port such as "registry.test", "auth.test" or
// "cdn.test".
func (u *Upstream) CountHost(host string) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hosts[host]
}

// CDNSawAuthorization returns how many requests to CDNHost carried an
// Authorization header. It should stay zero: a client or proxy that
// follows a redirect to another host must drop the header (net/http's
// Client does; see also RFC 9110, section 15.4).
func (u *Upstream) CDNSawAuthorization() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.cdnAuth
}

// Count returns how many requests of kind (see Kind) the upstream received,
// for example u.Count("GET blob").
func (u *Upstream) Count(kind string) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.kinds[kind]
}

// CountPath returns how many requests with method for exactly path (no
// query) the upstream received.
func (u *Upstream) CountPath(method, path string) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.paths[method+" "+path]
}

// Total returns how many requests the upstream received.
func (u *Upstream) Total() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.total
}

// ResetCounts sets every counter to zero.
func (u *Upstream) ResetCounts() {
	u.mu.Lock()
	defer u.mu.Unlock()
	clear(u.kinds)
	clear(u.paths)
	clear(u.hosts)
	u.total = 0
	u.cdnAuth = 0
}
