package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/ca"
)

// The mirror flags turn on the registry-mirror front end (proxy.ServeMirror)
// on a port of its own, plain HTTP or TLS.
func mirrorFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "mirror-listen", EnvVars: env("mirror-listen"),
			Usage: "address of the registry-mirror port (dockerd registry-mirrors, containerd hosts.toml, registries.conf mirrors); none by default"},
		&cli.StringFlag{Name: "mirror-tls-cert", EnvVars: env("mirror-tls-cert"),
			Usage: "PEM certificate (chain) FILE: the mirror port speaks HTTPS with it (with --mirror-tls-key)"},
		&cli.StringFlag{Name: "mirror-tls-key", EnvVars: env("mirror-tls-key"), Usage: "PEM private key FILE of --mirror-tls-cert"},
		&cli.StringFlag{Name: "mirror-hostname", EnvVars: env("mirror-hostname"),
			Usage: "the mirror port speaks HTTPS with a certificate regproxy's CA signs for this host name or IP address, the one nodes use"},
		&cli.BoolFlag{Name: "mirror-open", EnvVars: env("mirror-open"),
			Usage: "with --htpasswd, serve the mirror port beyond loopback all the same: it asks for no credentials"},
	}
}

// mirrorConfig is what the mirror flags ask for. A zero listen means no
// mirror port.
type mirrorConfig struct {
	listen   string
	cert     *tls.Certificate // from --mirror-tls-cert and --mirror-tls-key
	hostname string           // --mirror-hostname
}

// readMirrorFlags checks the mirror flags, before anything touches the
// disk: a bad combination or an unreadable certificate is a bad flag.
func readMirrorFlags(c *cli.Context) (mirrorConfig, error) {
	m := mirrorConfig{listen: c.String("mirror-listen"), hostname: c.String("mirror-hostname")}
	certFile, keyFile := c.String("mirror-tls-cert"), c.String("mirror-tls-key")
	switch {
	case m.listen == "" && (certFile != "" || keyFile != "" || m.hostname != ""):
		return m, badFlag("mirror-listen", errors.New("missing: the other --mirror-* flags need it"))
	case m.listen == "":
		return m, nil
	case (certFile == "") != (keyFile == ""):
		return m, badFlag("mirror-tls-cert", errors.New("--mirror-tls-cert and --mirror-tls-key go together"))
	case certFile != "" && m.hostname != "":
		return m, badFlag("mirror-hostname", errors.New("choose one: --mirror-hostname or --mirror-tls-cert"))
	}
	host, _, err := net.SplitHostPort(m.listen)
	if err != nil {
		return m, badFlag("mirror-listen", err)
	}
	// An operator who set --htpasswd wants only its users served; the
	// mirror port, which asks for no credentials, would serve everyone
	// who reaches it. That takes an explicit --mirror-open.
	if c.String("htpasswd") != "" && !c.Bool("mirror-open") && !isLoopbackHost(host) {
		return m, badFlag("mirror-listen", fmt.Errorf("%s is reachable beyond this host and asks for no credentials, which --htpasswd asks on the proxy port only; listen on loopback, or add --mirror-open", m.listen))
	}
	if m.hostname != "" && !hostnameOK(m.hostname) {
		return m, badFlag("mirror-hostname", fmt.Errorf("%q: want a host name or IP address, without scheme or port", m.hostname))
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return m, badFlag("mirror-tls-cert", err)
		}
		m.cert = &cert
	}
	return m, nil
}

// isLoopbackHost reports whether a listen address's host part binds
// loopback only.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// hostnameOK accepts an IP address or a DNS name: labels of letters,
// digits and hyphens.
func hostnameOK(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// listenMirror opens the mirror port, wrapped in TLS when the flags ask
// for it, and logs what it serves; nil when there is no mirror port.
func listenMirror(m mirrorConfig, authority *ca.CA, log *slog.Logger) (net.Listener, error) {
	if m.listen == "" {
		return nil, nil
	}
	cfg, mode := mirrorTLS(m, authority)
	ln, err := net.Listen("tcp", m.listen)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("--mirror-listen: %v", err), 1)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	log.Info("regproxy mirror serving", "listen", ln.Addr().String(), "tls", mode, "hostname", m.hostname)
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		log.Warn("the mirror port asks for no credentials (--htpasswd covers the proxy port only): whoever reaches it pulls what upstream serves anyone and what the configured credentials can read; expose it only to your nodes",
			"mirror_listen", ln.Addr().String())
	}
	return ln, nil
}

// mirrorTLS is the mirror port's TLS configuration and how the log names
// it: nil and "off" for plain HTTP.
func mirrorTLS(m mirrorConfig, authority *ca.CA) (*tls.Config, string) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	switch {
	case m.cert != nil:
		cfg.Certificates = []tls.Certificate{*m.cert}
		return cfg, "files"
	case m.hostname != "":
		// Asked on every handshake: the CA caches the leaf and mints a
		// new one before it expires.
		cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return authority.Leaf(m.hostname) }
		return cfg, "ca"
	}
	return nil, "off"
}

// checkCA makes sure, for --mirror-hostname, that a node trusting the CA
// accepts the leaf the CA signs for the name: a CA limited by name
// constraints to the registries cannot vouch for another name.
func (m mirrorConfig) checkCA(authority *ca.CA) error {
	if m.hostname == "" {
		return nil
	}
	leaf, err := authority.Leaf(m.hostname)
	if err != nil {
		return badFlag("mirror-hostname", err)
	}
	cert, err := x509.ParseCertificate(leaf.Certificate[0])
	if err != nil {
		return badFlag("mirror-hostname", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(authority.Certificate())
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: m.hostname, Roots: roots}); err != nil {
		return badFlag("mirror-hostname", fmt.Errorf("regproxy's CA cannot vouch for %s (is it limited by --ca-name-constraints?); use --mirror-tls-cert: %w", m.hostname, err))
	}
	return nil
}
