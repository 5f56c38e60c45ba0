package proxy

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/regproxy/regproxy/internal/dockerhub"
)

// TTLRule gives the tags whose name matches Pattern a TTL of their own, in
// place of Config.ManifestTTL.
type TTLRule struct {
	// Pattern is matched, unanchored, against the tag's name as TagName
	// spells it: "docker.io/library/alpine:latest",
	// "quay.io/prometheus/node-exporter:v1.8.2", "registry.test:5000/app:v1".
	// A Docker Hub tag matches when either of its two names does (see
	// TagNames), so that a rule may say docker.io or registry-1.docker.io.
	Pattern *regexp.Regexp
	// TTL is how long a tag record is served without asking upstream.
	// Zero means never: every request for the tag asks upstream with a
	// HEAD, which costs no manifest GET while the digest is unchanged and
	// is served the cached copy (stale) while upstream is down.
	TTL time.Duration
}

// checkTTLRules refuses rules New cannot apply.
func checkTTLRules(rules []TTLRule) error {
	for i, r := range rules {
		if r.Pattern == nil {
			return fmt.Errorf("proxy: TTL rule %d has no pattern", i+1)
		}
		if r.TTL < 0 {
			return fmt.Errorf("proxy: TTL rule %q: negative TTL %v", r.Pattern, r.TTL)
		}
	}
	return nil
}

// tagTTL is the TTL of a tag record: that of the first rule whose pattern
// matches one of the tag's names, else the default. Rules are read on each
// use, not taken from the record, so that a rule changed at a restart
// applies at once to every record already kept.
func (p *Proxy) tagTTL(registry, repo, tag string) time.Duration {
	if len(p.ttlRules) == 0 {
		return p.manifestTTL // the common case: no name to build
	}
	name, alias := TagNames(registry, repo, tag)
	for _, r := range p.ttlRules {
		if r.Pattern.MatchString(name) || alias != "" && r.Pattern.MatchString(alias) {
			return r.TTL
		}
	}
	return p.manifestTTL
}

// TagName returns the name of a tag kept in the cache, as people write
// image references and as TTL rules match it: registry/repository:tag.
// registry is the "host:port" of the tag record (canonicalRepo's), and
// the port is left out when it is 443. Docker Hub is docker.io, with the
// repository it holds ("library/alpine" for alpine), as
// distribution/reference normalizes it: docker.io/library/alpine:latest.
func TagName(registry, repo, tag string) string {
	name, _ := TagNames(registry, repo, tag)
	return name
}

// TagNames returns TagName's name and, for Docker Hub, an alias naming
// the host that serves its API: registry-1.docker.io/library/alpine:latest.
// Other registries have no alias (""). Every alias of Hub's API
// (index.docker.io, docker.io, registry-1.docker.io) keeps its tags under
// one name, so a rule cannot tell which one a client used.
func TagNames(registry, repo, tag string) (name, alias string) {
	host, port, err := net.SplitHostPort(registry)
	if err != nil {
		host, port = registry, ""
	}
	suffix := ""
	if port != "" && port != "443" {
		suffix = ":" + port
	}
	path := "/" + repo + ":" + tag
	if dockerhub.IsAPIHost(strings.ToLower(host)) {
		return dockerhub.Name + suffix + path, dockerhub.Registry + suffix + path
	}
	if strings.Contains(host, ":") { // an IPv6 literal
		host = "[" + host + "]"
	}
	return host + suffix + path, ""
}
