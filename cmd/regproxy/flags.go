package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/upstreamauth"
)

const defaultRegistries = "docker.io quay.io gcr.io nvcr.io registry.k8s.io ghcr.io"

// env names a flag's environment variables: REGPROXY_<FLAG_NAME> first,
// then any names users of other proxies already have.
func env(flag string, legacy ...string) []string {
	name := "REGPROXY_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
	return append([]string{name}, legacy...)
}

func dataDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "data-dir", Value: "/var/lib/regproxy", EnvVars: env("data-dir"),
		Usage: "directory for the CA (DIR/ca) and the cache (DIR/cache)"}
}

func caFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "ca-cert", EnvVars: env("ca-cert"), Usage: "PEM file of a supplied CA certificate (with --ca-key)"},
		&cli.StringFlag{Name: "ca-key", EnvVars: env("ca-key"), Usage: "PEM file of the supplied CA's private key"},
	}
}

func serveFlags() []cli.Flag {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "listen", Value: ":3128", EnvVars: env("listen"), Usage: "address of the proxy port"},
		dataDirFlag(),
		&cli.StringFlag{Name: "registries", Value: defaultRegistries, EnvVars: env("registries", "REGISTRIES"),
			Usage: "registries to intercept and cache, space- or comma-separated; host (any port) or host:port"},
		&cli.StringFlag{Name: "upstream-proxy", EnvVars: env("upstream-proxy"),
			Usage: "http://[USER:PASS@]HOST:PORT of a proxy for regproxy's own upstream traffic (HTTPS_PROXY is never used)"},
		&cli.StringSliceFlag{Name: "auth-registry", EnvVars: env("auth-registry"),
			Usage: "HOST=USER:PASSWORD: credentials regproxy uses upstream when a client sends none (repeatable)"},
		&cli.StringFlag{Name: "auth-file", EnvVars: env("auth-file"), Usage: "docker config.json whose \"auths\" regproxy uses upstream"},
		&cli.StringFlag{Name: "upstream-ca", EnvVars: env("upstream-ca"), Usage: "PEM file of extra roots for upstream TLS"},
		&cli.StringSliceFlag{Name: "resolve", EnvVars: env("resolve"), Usage: "HOST:PORT=IP:PORT: dial IP:PORT for HOST:PORT (repeatable)"},
		&cli.StringFlag{Name: "manifest-ttl", Value: "1h", EnvVars: env("manifest-ttl", "MANIFEST_CACHE_DEFAULT_TIME"),
			Usage: "how long a manifest fetched by tag is served before revalidation (e.g. 30m, 1h, 1d)"},
		&cli.StringFlag{Name: "fill-timeout", Value: "1h", EnvVars: env("fill-timeout"), Usage: "time limit of one blob download into the cache"},
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: env("log-format"), Usage: "text or json"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: env("log-level"), Usage: "debug, info, warn or error"},
	}
	return append(flags, caFlags()...)
}

// maxDays is the most days a time.Duration holds (about 292 years).
const maxDays = math.MaxInt64 / int64(24*time.Hour)

// parseDuration accepts Go durations ("90s", "1h30m") and, as nginx-based
// proxies do, whole days ("1d", "7d").
func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		// Past maxDays, n days overflow a Duration and would wrap negative.
		if err != nil || n <= 0 || int64(n) > maxDays {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("invalid duration %q: want e.g. 30m, 1h or 1d", s)
	}
	return d, nil
}

// splitList splits a space- or comma-separated list.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
}

// parseResolve reads HOST:PORT=IP:PORT overrides.
func parseResolve(entries []string) (map[string]string, error) {
	m := make(map[string]string, len(entries))
	for _, e := range entries {
		from, to, ok := strings.Cut(e, "=")
		if !ok || !hasHostPort(from) || !hasHostPort(to) {
			return nil, fmt.Errorf("%q: want HOST:PORT=IP:PORT", e)
		}
		m[strings.ToLower(from)] = to
	}
	return m, nil
}

func hasHostPort(s string) bool {
	h, p, err := net.SplitHostPort(s)
	if err != nil || h == "" {
		return false
	}
	n, err := strconv.Atoi(p)
	return err == nil && n > 0 && n < 65536
}

// loadRoots returns the system roots plus the certificates in file.
func loadRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no PEM certificates in " + file)
	}
	return pool, nil
}

// newLogger builds the process logger on stderr.
func newLogger(format, level string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, badFlag("log-level", fmt.Errorf("%q: want debug, info, warn or error", level))
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, badFlag("log-format", fmt.Errorf("%q: want text or json", format))
}

// parseUpstreamProxy validates the --upstream-proxy URL: plain HTTP with a
// host and port, as corporate egress proxies are.
func parseUpstreamProxy(s string) (*url.URL, error) {
	if s == "" {
		return nil, nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" || !hasHostPort(u.Host) || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("%q: want http://[USER:PASS@]HOST:PORT", redact(s))
	}
	return u, nil
}

// redact hides a password in a URL before it reaches a message.
func redact(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return s
}

// loadCredentials merges, lowest precedence first: AUTH_REGISTRIES (the
// format of rpardini/docker-registry-proxy), --auth-file, --auth-registry.
func loadCredentials(c *cli.Context) (upstreamauth.Keyring, error) {
	keys, err := upstreamauth.ParseAuthRegistries(os.Getenv("AUTH_REGISTRIES"))
	if err != nil {
		return nil, cli.Exit(err.Error(), 2) // the message names AUTH_REGISTRIES
	}
	if file := c.String("auth-file"); file != "" {
		fromFile, err := upstreamauth.LoadDockerConfig(file)
		if err != nil {
			return nil, badFlag("auth-file", err)
		}
		keys = upstreamauth.Merge(keys, fromFile)
	}
	for _, v := range c.StringSlice("auth-registry") {
		host, cred, err := upstreamauth.ParseFlag(v)
		if err != nil {
			return nil, cli.Exit(err.Error(), 2) // the message names --auth-registry
		}
		keys = upstreamauth.Merge(keys, upstreamauth.Keyring{host: cred})
	}
	return keys, nil
}
