// Package dockerhub names the hosts Docker Hub serves from: the one list
// that proxy (what "docker.io" on the allow-list intercepts, how cache keys
// name a Hub repository) and upstreamauth (under which names Hub
// credentials are found) share. It knows nothing of how either uses them.
package dockerhub

// Name is what people call Docker Hub: the registry of image references
// without a host ("alpine" is docker.io/library/alpine), and the
// allow-list entry that stands for every host in Hosts.
const Name = "docker.io"

// Registry is the host that serves Hub's registry API. The other API
// hosts are aliases of it.
const Registry = "registry-1.docker.io"

// TokenHost is Hub's token service (the realm of its Bearer challenges).
const TokenHost = "auth.docker.io"

// apiHosts serve the registry API, Registry first: the order in which
// credentials stored under each are preferred.
var apiHosts = [...]string{Registry, "index.docker.io", Name}

// cdnHosts are where the API redirects blob downloads.
var cdnHosts = [...]string{
	"production.cloudflare.docker.com",
	"docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com",
}

// APIHosts returns the hosts that serve Hub's registry API, Registry
// first. The slice is the caller's.
func APIHosts() []string { return append([]string(nil), apiHosts[:]...) }

// IsAPIHost reports whether host (lowercase, without a port) serves Hub's
// registry API.
func IsAPIHost(host string) bool {
	for _, h := range apiHosts {
		if host == h {
			return true
		}
	}
	return false
}

// Hosts returns every host Hub serves from: the API hosts, the token
// service and the blob CDN. The slice is the caller's.
func Hosts() []string {
	hosts := append(APIHosts(), TokenHost)
	return append(hosts, cdnHosts[:]...)
}
