package ca

import (
	"crypto/x509"
	"net"
	"slices"
	"strings"
)

// Name constraints (RFC 5280 §4.2.1.10) in the CA certificate keep a CA
// that nodes put in their system trust store harmless beyond the
// registries: Go (dockerd, containerd, podman, skopeo) and OpenSSL (curl,
// and so enroot) refuse a leaf for a name the constraints do not permit,
// whoever signed it with the CA's key. Both enforce the constraints of a
// root, not only of intermediates.

// Ranges that hold every address of a family, to exclude a family no
// registry uses.
var (
	allIPv4 = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	allIPv6 = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
)

// constrain limits tmpl to signing for hosts and their subdomains. The
// policy, one clause per name type a TLS client checks:
//   - DNS: a host permits itself and every name below it, because that is
//     what a dNSName constraint means; a host already covered by another one
//     in the list is dropped as redundant.
//   - IP: an IP literal permits that one address (/32 or /128).
//   - A type with no host permits nothing: clients leave a type without
//     permitted subtrees unconstrained, so it is excluded outright (every
//     address, or every DNS name through the empty domain, which matches
//     all names).
//
// The extension is critical, so a client that cannot enforce it rejects the
// CA rather than trusting it for everything.
func constrain(tmpl *x509.Certificate, hosts []string) error {
	dns, ips, err := splitHosts(hosts)
	if err != nil {
		return err
	}
	tmpl.PermittedDNSDomainsCritical = true
	tmpl.PermittedDNSDomains = dns
	if len(dns) == 0 {
		tmpl.ExcludedDNSDomains = []string{""}
	}
	for _, ip := range ips {
		bits := 8 * len(ip)
		tmpl.PermittedIPRanges = append(tmpl.PermittedIPRanges, &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)})
	}
	if len(ips) == 0 {
		tmpl.ExcludedIPRanges = []*net.IPNet{allIPv4, allIPv6}
	}
	return nil
}

// splitHosts validates hosts (no ports, no wildcards) and returns them
// sorted and without repeats, as a CA is the same whatever the order of the
// list it was made for: the DNS names, minus those below another one, and
// the IP addresses, IPv4 in their 4-byte form.
func splitHosts(hosts []string) (dns []string, ips []net.IP, err error) {
	names := make([]string, 0, len(hosts))
	for _, h := range hosts {
		name, err := normalizeHost(h)
		if err != nil {
			return nil, nil, err
		}
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range slices.Compact(names) {
		if ip := net.ParseIP(name); ip != nil {
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			ips = append(ips, ip)
		} else {
			dns = append(dns, name)
		}
	}
	return withoutSubdomains(dns), ips, nil
}

// withoutSubdomains drops the names that lie below another one of names: a
// dNSName constraint covers them already.
func withoutSubdomains(names []string) []string {
	var top []string
	for _, name := range names {
		if !slices.ContainsFunc(names, func(d string) bool { return d != name && underDomain(name, d) }) {
			top = append(top, name)
		}
	}
	return top
}

// Constrained reports whether the CA certificate limits the DNS names or IP
// addresses it may vouch for.
func (c *CA) Constrained() bool {
	cert := c.cert
	return len(cert.PermittedDNSDomains)+len(cert.ExcludedDNSDomains)+
		len(cert.PermittedIPRanges)+len(cert.ExcludedIPRanges) > 0
}

// Permits reports whether a client that enforces the CA's name constraints
// accepts a leaf for host (a DNS name or IP literal, no port). A CA without
// constraints permits every valid host.
func (c *CA) Permits(host string) bool {
	name, err := normalizeHost(host)
	if err != nil {
		return false
	}
	cert := c.cert
	if ip := net.ParseIP(name); ip != nil {
		return (len(cert.PermittedIPRanges) == 0 || inRanges(cert.PermittedIPRanges, ip)) &&
			!inRanges(cert.ExcludedIPRanges, ip)
	}
	return (len(cert.PermittedDNSDomains) == 0 || underAny(cert.PermittedDNSDomains, name)) &&
		!underAny(cert.ExcludedDNSDomains, name)
}

// PermittedNames lists the CA's permitted DNS domains and IP ranges, for
// messages; it is empty for a CA without constraints.
func (c *CA) PermittedNames() []string {
	names := slices.Clone(c.cert.PermittedDNSDomains)
	for _, r := range c.cert.PermittedIPRanges {
		names = append(names, r.String())
	}
	return names
}

// underAny reports whether name matches one of the dNSName constraints.
func underAny(domains []string, name string) bool {
	return slices.ContainsFunc(domains, func(d string) bool { return underDomain(name, d) })
}

// underDomain matches a lowercased name against one dNSName constraint, as
// RFC 5280 §4.2.1.10 and Go's verifier read it: "example.com" matches itself
// and every subdomain, ".example.com" only subdomains, and "" every name.
// Matching is by whole labels, so "notexample.com" is not under
// "example.com".
func underDomain(name, domain string) bool {
	domain = strings.ToLower(domain)
	if domain == "" {
		return true
	}
	if strings.HasPrefix(domain, ".") {
		return strings.HasSuffix(name, domain)
	}
	return name == domain || strings.HasSuffix(name, "."+domain)
}

// inRanges reports whether ip lies in one of ranges. An IPv4 address never
// matches an IPv6 range or the reverse, as in Go's verifier and OpenSSL.
func inRanges(ranges []*net.IPNet, ip net.IP) bool {
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return slices.ContainsFunc(ranges, func(r *net.IPNet) bool {
		return len(r.IP) == len(ip) && r.Contains(ip)
	})
}
