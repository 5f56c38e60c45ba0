package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/upstreamauth"
)

// regproxy warm pulls images through a running regproxy so that its cache
// holds them: every platform of each image, its manifests by digest and
// every blob. It is a client of the proxy port, like a node: it trusts
// the proxy's CA, fetched from /ca.crt and checked against --ca-sha256,
// and nothing else, so that no byte reaches it except through the cache.

func warmCommand() *cli.Command {
	return &cli.Command{
		Name:      "warm",
		Usage:     "pull images through a running regproxy, every platform, so that its cache holds them",
		ArgsUsage: "IMAGE...",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "proxy", EnvVars: env("proxy"),
				Usage: "the regproxy port, as nodes name it in HTTPS_PROXY: http://[USER:PASS@]HOST:PORT (required)"},
			&cli.StringFlag{Name: "ca-sha256", EnvVars: env("ca-sha256"),
				Usage: "SHA-256 of the CA certificate (DER, hex) that PROXY/ca.crt must serve, as serve logs it (ca_sha256=); without it, warm trusts what it gets and prints its fingerprint"},
			&cli.StringFlag{Name: "file", Usage: "read images from FILE too, one a line; # starts a comment; - is stdin"},
			&cli.StringFlag{Name: "parallel", Value: "4", EnvVars: env("parallel"),
				Usage: "images pulled at once, and blobs downloaded at once"},
			&cli.StringFlag{Name: "auth-file", Usage: "docker config.json whose \"auths\" authenticate the pulls (default: anonymous)"},
		},
		OnUsageError: usageError,
		Action:       warm,
	}
}

// warmOptions are warm's flags and arguments, checked.
type warmOptions struct {
	proxy    *url.URL
	pin      string // --ca-sha256, lowercase hex; "" to trust on first use
	images   []warmImage
	parallel int
	keychain authn.Keychain
}

func warm(c *cli.Context) error {
	o, err := warmConfig(c)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	roots, err := trustProxyCA(ctx, o.proxy, o.pin, c.App.ErrWriter)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	w := newWarmer(o, proxyTransport(o.proxy, roots), newReporter(c.App.ErrWriter))
	results := w.run(ctx, o.images)
	// The progress, on stderr, is written before the summary on stdout.
	if lw, ok := c.App.ErrWriter.(*logWriter); ok {
		lw.flush()
	}
	return warmSummary(c.App.Writer, results)
}

// warmConfig reads and checks warm's flags and arguments: every mistake
// is a usage error (exit 2) before anything is fetched.
func warmConfig(c *cli.Context) (*warmOptions, error) {
	o := &warmOptions{keychain: anonymous{}}
	var err error
	if o.proxy, err = parseProxyURL(c.String("proxy")); err != nil {
		return nil, badFlag("proxy", err)
	}
	if o.pin, err = parsePin(c.String("ca-sha256")); err != nil {
		return nil, badFlag("ca-sha256", err)
	}
	if o.parallel, err = strconv.Atoi(c.String("parallel")); err != nil || o.parallel < 1 || o.parallel > 64 {
		return nil, badFlag("parallel", fmt.Errorf("%q: want a whole number from 1 to 64", c.String("parallel")))
	}
	if file := c.String("auth-file"); file != "" {
		keys, err := upstreamauth.LoadDockerConfig(file)
		if err != nil {
			return nil, badFlag("auth-file", err)
		}
		o.keychain = keyringKeychain(keys)
	}
	names := c.Args().Slice()
	if file := c.String("file"); file != "" {
		more, err := readImageList(file, c.App.Reader)
		if err != nil {
			return nil, badFlag("file", err)
		}
		names = append(names, more...)
	}
	if o.images, err = parseImages(names); err != nil {
		return nil, cli.Exit(err.Error(), 2)
	}
	return o, nil
}

// parseProxyURL reads --proxy: http or https, a host and a port, nothing
// after them.
func parseProxyURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("required: the regproxy port, e.g. http://regproxy:3128")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !hasHostPort(u.Host) ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q: want http://[USER:PASS@]HOST:PORT", redact(s))
	}
	u.Path = ""
	return u, nil
}

// parsePin reads --ca-sha256: 64 hex digits, either case, with or without
// the colons of openssl's -fingerprint.
func parsePin(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	pin := strings.ToLower(strings.ReplaceAll(s, ":", ""))
	if b, err := hex.DecodeString(pin); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("%q: want the 64 hex digits of a SHA-256, as serve logs ca_sha256", s)
	}
	return pin, nil
}

// readImageList reads image references, one a line, from file ("-":
// stdin). Blank lines and what follows a # are ignored.
func readImageList(file string, stdin io.Reader) ([]string, error) {
	r := stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	var names []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.TrimSpace(line); line != "" {
			names = append(names, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return names, nil
}

// warmImage is an image to warm: the reference as the user wrote it, and
// parsed.
type warmImage struct {
	name string
	ref  name.Reference
}

// parseImages parses references as docker does ("alpine" is
// index.docker.io/library/alpine:latest), each once, in order.
func parseImages(names []string) ([]warmImage, error) {
	if len(names) == 0 {
		return nil, errors.New("no images: give IMAGE arguments or --file")
	}
	seen := map[string]bool{}
	var images []warmImage
	for _, s := range names {
		ref, err := name.ParseReference(s)
		if err != nil {
			return nil, fmt.Errorf("image %q: %v", s, err)
		}
		if !seen[ref.Name()] {
			seen[ref.Name()] = true
			images = append(images, warmImage{name: s, ref: ref})
		}
	}
	return images, nil
}

// caFetchTimeout bounds the fetch of PROXY/ca.crt.
const caFetchTimeout = 30 * time.Second

// trustProxyCA fetches the proxy's CA from /ca.crt, straight from the
// proxy port (no proxy of the environment), and returns a pool holding it
// alone. With a pin, a CA whose SHA-256 differs is refused; without one,
// the fingerprint trusted is written to log, for the user to pin next time.
func trustProxyCA(ctx context.Context, proxy *url.URL, pin string, log io.Writer) (*x509.CertPool, error) {
	cert, err := fetchCA(ctx, proxy)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(cert.Raw)
	got := hex.EncodeToString(sum[:])
	switch {
	case pin != "" && got != pin:
		return nil, fmt.Errorf("refusing the CA of %s: its ca_sha256=%s is not --ca-sha256 %s", proxy.Redacted(), got, pin)
	case pin == "":
		fmt.Fprintf(log, "regproxy warm: trusting the CA of %s, ca_sha256=%s (check it against serve's log; --ca-sha256 pins it)\n", proxy.Redacted(), got)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool, nil
}

// fetchCA GETs PROXY/ca.crt and parses the first certificate in it, which
// must be a CA. /ca.crt asks for no credentials, so none are sent.
func fetchCA(ctx context.Context, proxy *url.URL) (*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, caFetchTimeout)
	defer cancel()
	u := url.URL{Scheme: proxy.Scheme, Host: proxy.Host, Path: "/ca.crt"}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch the CA: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch the CA from %s: %s %v", u.String(), resp.Status, err)
	}
	block, _ := pem.Decode(body)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", u.String())
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", u.String(), err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s: the certificate is not a CA", u.String())
	}
	return cert, nil
}

// proxyTransport reaches registries through the proxy alone, trusting
// roots alone: a registry regproxy does not intercept fails to verify,
// rather than being pulled around the cache.
func proxyTransport(proxy *url.URL, roots *x509.CertPool) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = http.ProxyURL(proxy)
	tr.TLSClientConfig = &tls.Config{RootCAs: roots}
	tr.MaxIdleConnsPerHost = 64
	return tr
}

// anonymous is the keychain of warm without --auth-file.
type anonymous struct{}

func (anonymous) Resolve(authn.Resource) (authn.Authenticator, error) { return authn.Anonymous, nil }

// keyringKeychain finds credentials of an --auth-file as regproxy itself
// does (Docker Hub's names are one), anonymous where it has none.
type keyringKeychain upstreamauth.Keyring

func (k keyringKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if c, ok := upstreamauth.Keyring(k).Lookup(r.RegistryStr()); ok {
		return &authn.Basic{Username: c.Username, Password: c.Password}, nil
	}
	return authn.Anonymous, nil
}
