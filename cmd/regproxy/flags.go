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

	"github.com/regproxy/regproxy/proxy"
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

func registriesFlag() cli.Flag {
	return &cli.StringFlag{Name: "registries", Value: defaultRegistries, EnvVars: env("registries", "REGISTRIES"),
		Usage: "registries to intercept and cache, space- or comma-separated; host (any port) or host:port"}
}

// caFlags choose the CA of serve and ca print (see loadCA).
func caFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "ca-cert", EnvVars: env("ca-cert"), Usage: "PEM file of a supplied CA certificate (with --ca-key)"},
		&cli.StringFlag{Name: "ca-key", EnvVars: env("ca-key"), Usage: "PEM file of the supplied CA's private key"},
		&cli.BoolFlag{Name: "ca-name-constraints", EnvVars: env("ca-name-constraints"),
			Usage: "generate DATA_DIR/ca limited to the --registries hosts, and refuse to start with one that is not"},
	}
}

func serveFlags() []cli.Flag {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "listen", Value: ":3128", EnvVars: env("listen"), Usage: "address of the proxy port"},
		&cli.StringFlag{Name: "htpasswd", EnvVars: env("htpasswd"),
			Usage: "htpasswd FILE of bcrypt entries (htpasswd -B): CONNECTs must then carry Proxy-Authorization of one of its users (/ca.crt, /healthz, /metrics and / stay open)"},
		dataDirFlag(),
		registriesFlag(),
		&cli.StringFlag{Name: "upstream-proxy", EnvVars: env("upstream-proxy"),
			Usage: "http://[USER:PASS@]HOST:PORT of a proxy for regproxy's own upstream traffic (HTTPS_PROXY is never used)"},
		&cli.StringSliceFlag{Name: "auth-registry", EnvVars: env("auth-registry"),
			Usage: "HOST=USER:PASSWORD, or @FILE holding one a line (keeps passwords out of ps): credentials regproxy lends to every client that sends none, for pulls only; never for pushes, deletes or token requests (repeatable)"},
		&cli.StringFlag{Name: "auth-file", EnvVars: env("auth-file"), Usage: "docker config.json whose \"auths\" regproxy uses upstream"},
		&cli.StringFlag{Name: "upstream-ca", EnvVars: env("upstream-ca"), Usage: "PEM file of extra roots for upstream TLS"},
		&cli.StringSliceFlag{Name: "resolve", EnvVars: env("resolve"), Usage: "HOST:PORT=IP:PORT: dial IP:PORT for HOST:PORT (repeatable)"},
		&cli.StringFlag{Name: "tunnel", Value: "allow", EnvVars: env("tunnel"),
			Usage: "allow or deny: tunnel CONNECTs to hosts not on --registries (deny: only those on --tunnel-allow)"},
		&cli.StringSliceFlag{Name: "tunnel-allow", EnvVars: env("tunnel-allow"),
			Usage: "with --tunnel deny, what may be tunnelled: host (any port) or host:port, space- or comma-separated (repeatable)"},
		&cli.StringFlag{Name: "tunnel-idle-timeout", Value: "5m", EnvVars: env("tunnel-idle-timeout"),
			Usage: "close a tunnel that moved no byte either way for this long"},
		&cli.StringFlag{Name: "tunnel-max-per-client", Value: "64", EnvVars: env("tunnel-max-per-client"),
			Usage: "most tunnels one client IP may hold at once"},
		&cli.StringFlag{Name: "manifest-ttl", Value: "1h", EnvVars: env("manifest-ttl", "MANIFEST_CACHE_DEFAULT_TIME"),
			Usage: "how long a manifest fetched by tag is served before revalidation (e.g. 30m, 1h, 1d)"},
		ttlRuleFlag(),
		&cli.BoolFlag{Name: "status-repos", EnvVars: env("status-repos"),
			Usage: "list the top repositories by bytes served on the status page (GET / in a browser, /status.json), which everyone who reaches the proxy port can read"},
		&cli.StringFlag{Name: "fill-timeout", Value: "1h", EnvVars: env("fill-timeout"), Usage: "time limit of one blob download into the cache"},
		&cli.StringFlag{Name: "fill-stall-timeout", Value: "1m", EnvVars: env("fill-stall-timeout"),
			Usage: "a blob download that receives no byte for this long is resumed with a Range request, or fails"},
		&cli.StringFlag{Name: "shutdown-grace", Value: "30s", EnvVars: env("shutdown-grace"),
			Usage: "on SIGTERM or SIGINT, how long responses in flight may run on before they are cut (a second signal exits at once)"},
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: env("log-format"), Usage: "text or json"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: env("log-level"), Usage: "debug, info, warn or error"},
		summaryFlag(),
	}
	flags = append(flags, storageFlags()...)
	flags = append(flags, evictFlags()...)
	flags = append(flags, mirrorFlags()...)
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

// hasHostPort reports whether s is HOST:PORT in the one form a dial names
// it: "h:0443", "h:+443" or "[h]:443" would be keys no dial ever matches.
func hasHostPort(s string) bool {
	h, p, err := net.SplitHostPort(s)
	if err != nil || h == "" || strings.ContainsAny(h, " \t") {
		return false
	}
	n, err := strconv.Atoi(p)
	return err == nil && n > 0 && n < 65536 && net.JoinHostPort(h, strconv.Itoa(n)) == s
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
		more, err := upstreamauth.ParseFlagValue(v) // HOST=USER:PASSWORD, or @FILE of them
		if err != nil {
			return nil, cli.Exit(err.Error(), 2) // the message names --auth-registry
		}
		keys = upstreamauth.Merge(keys, more)
	}
	return keys, nil
}

// tunnelConfig reads the tunnel flags into cfg.
func tunnelConfig(c *cli.Context, cfg *proxy.Config) error {
	switch mode := c.String("tunnel"); mode {
	case "allow":
	case "deny":
		cfg.TunnelDeny = true
	default:
		return badFlag("tunnel", fmt.Errorf("%q: want allow or deny", mode))
	}
	var err error
	if cfg.TunnelAllow, err = tunnelAllow(c.StringSlice("tunnel-allow"), cfg.TunnelDeny); err != nil {
		return badFlag("tunnel-allow", err)
	}
	if cfg.TunnelIdleTimeout, err = parseDuration(c.String("tunnel-idle-timeout")); err != nil {
		return badFlag("tunnel-idle-timeout", err)
	}
	limit := c.String("tunnel-max-per-client")
	if cfg.TunnelMaxPerClient, err = strconv.Atoi(limit); err != nil || cfg.TunnelMaxPerClient <= 0 {
		return badFlag("tunnel-max-per-client", fmt.Errorf("%q: want a positive whole number", limit))
	}
	return nil
}

// tunnelAllow flattens --tunnel-allow values, each a list, and checks them.
func tunnelAllow(values []string, deny bool) ([]string, error) {
	var entries []string
	for _, v := range values {
		entries = append(entries, splitList(v)...)
	}
	if len(entries) > 0 && !deny {
		// Under --tunnel allow every host is tunnelled anyway: an ignored
		// list would read as a restriction that is not there.
		return nil, errors.New("needs --tunnel deny")
	}
	return entries, proxy.CheckTunnelAllow(entries)
}
