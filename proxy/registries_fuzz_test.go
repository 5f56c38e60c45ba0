package proxy

import (
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/regproxy/regproxy/internal/dockerhub"
)

// fuzzLabelRE is one DNS label as --registries takes it, lowercase: letters,
// digits, '_' and '-', not starting or ending with '-'.
var fuzzLabelRE = regexp.MustCompile(`^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$`)

// fuzzValidHost is the oracle for a lowercase registry host: an IP literal,
// or a DNS name of at most 253 bytes.
func fuzzValidHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if !fuzzLabelRE.MatchString(label) {
			return false
		}
	}
	return true
}

// fuzzValidPort is the oracle for a port: decimal 1 to 65535, no sign and
// no leading zero, so that it is written as CONNECT targets write it.
func fuzzValidPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535 && p == strconv.Itoa(n)
}

// FuzzCheckRegistries checks the --registries parser against an oracle of
// its own. The list is accepted exactly when every entry is a valid host
// or host:port; then an entry "h:p" intercepts "h:p" and no other port of
// h, an entry "h" intercepts every port of h, "docker.io" stands for all
// of Docker Hub's hosts, and RegistryHosts lists exactly those hosts.
func FuzzCheckRegistries(f *testing.F) {
	for _, s := range []string{
		"docker.io ghcr.io nvcr.io registry.k8s.io quay.io",
		"registry.local:5000,10.0.0.1:443", "127.0.0.1 [::1]:5000 ::1",
		"Registry.Local:5000", "my_registry.internal", " , ,\t",
		"docker.io:443", "h:0", "h:65536", "h:0443", "h:+443", "h:", ":443",
		"-bad.io", "bad-.io", "a..b", "a.b.", "[foo]:80", "[::1]", "h:p:q", "a/b", "a@b",
		strings.Repeat("a", 64) + ".io", strings.Repeat("a.", 127) + "a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		entries := strings.FieldsFunc(list, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
		anyPort, exact, valid := fuzzAllowList(entries)
		a, err := parseAllowList(entries)
		if (err == nil) != valid || (CheckRegistries(entries) == nil) != valid {
			t.Fatalf("parseAllowList(%q): %v; oracle says valid=%v", entries, err, valid)
		}
		if err != nil {
			if RegistryHosts(entries) != nil {
				t.Fatalf("RegistryHosts(%q) = %q after an error; want nil", entries, RegistryHosts(entries))
			}
			return
		}
		want := func(target string) bool {
			h, p, _ := net.SplitHostPort(strings.ToLower(target))
			return anyPort[h] || exact[net.JoinHostPort(h, p)]
		}
		for _, target := range fuzzProbes(anyPort, exact) {
			if got := a.Intercepts(target); got != want(target) {
				t.Fatalf("entries %q: Intercepts(%q) = %v, want %v", entries, target, got, want(target))
			}
		}
		hosts := maps.Clone(anyPort)
		for target := range exact {
			h, _, _ := net.SplitHostPort(target)
			hosts[h] = true
		}
		got, wantHosts := RegistryHosts(entries), slices.Sorted(maps.Keys(hosts))
		if slices.Sort(got); !slices.Equal(got, wantHosts) {
			t.Fatalf("RegistryHosts(%q) = %q, want %q", entries, got, wantHosts)
		}
	})
}

// fuzzAllowList is the oracle's reading of allow-list entries: the hosts
// intercepted on any port, the host:port targets intercepted exactly, and
// whether every entry is valid.
func fuzzAllowList(entries []string) (anyPort, exact map[string]bool, valid bool) {
	anyPort, exact = map[string]bool{}, map[string]bool{}
	for _, e := range entries {
		e = strings.ToLower(strings.TrimSpace(e))
		switch h, p, err := net.SplitHostPort(e); {
		case e == "":
		case err == nil && fuzzValidHost(h) && fuzzValidPort(p):
			exact[net.JoinHostPort(h, p)] = true
		case err == nil || !fuzzValidHost(e):
			return nil, nil, false
		case e == "docker.io":
			for _, h := range dockerhub.Hosts() {
				anyPort[h] = true
			}
		default:
			anyPort[e] = true
		}
	}
	return anyPort, exact, true
}

// fuzzProbes returns CONNECT targets near the entries: each listed target,
// its host on other ports, in upper case, and Docker Hub's hosts.
func fuzzProbes(anyPort, exact map[string]bool) []string {
	probes := []string{"registry-1.docker.io:443", "auth.docker.io:443", "docker.io:80", "unlisted.test:443"}
	for h := range anyPort {
		probes = append(probes, net.JoinHostPort(h, "443"), net.JoinHostPort(strings.ToUpper(h), "1"))
	}
	for target := range exact {
		h, p, _ := net.SplitHostPort(target)
		n, _ := strconv.Atoi(p)
		probes = append(probes, target, strings.ToUpper(target), net.JoinHostPort(h, strconv.Itoa(n%65535+1)), net.JoinHostPort(h, "443"))
	}
	return probes
}
