package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/ca"
	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/proxy"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:         "serve",
		Usage:        "run the proxy",
		Flags:        serveFlags(),
		OnUsageError: usageError,
		Action:       serve,
	}
}

func caCommand() *cli.Command {
	return &cli.Command{
		Name:   "ca",
		Usage:  "inspect the CA",
		Action: unknownCommand,
		Subcommands: []*cli.Command{{
			Name:         "print",
			Usage:        "print the CA certificate in PEM (generating the CA on first use)",
			Flags:        append([]cli.Flag{dataDirFlag()}, caFlags()...),
			OnUsageError: usageError,
			Action: func(c *cli.Context) error {
				authority, err := loadCA(c)
				if err != nil {
					return err
				}
				_, err = c.App.Writer.Write(authority.CertPEM())
				return err
			},
		}},
	}
}

// loadCA loads the supplied CA, or the one in DATA_DIR/ca (generating it
// on first start).
func loadCA(c *cli.Context) (*ca.CA, error) {
	cert, key := c.String("ca-cert"), c.String("ca-key")
	if (cert == "") != (key == "") {
		return nil, badFlag("ca-cert", fmt.Errorf("--ca-cert and --ca-key go together"))
	}
	if cert != "" {
		authority, err := ca.LoadFiles(cert, key, ca.Options{})
		if err != nil {
			return nil, badFlag("ca-cert", err)
		}
		return authority, nil
	}
	authority, err := ca.LoadOrCreate(filepath.Join(c.String("data-dir"), "ca"), ca.Options{})
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("CA in %s: %v", c.String("data-dir"), err), 1)
	}
	return authority, nil
}

// serveConfig turns the serve flags into a proxy.Config.
func serveConfig(c *cli.Context) (proxy.Config, error) {
	var cfg proxy.Config
	var err error
	if cfg.ManifestTTL, err = parseDuration(c.String("manifest-ttl")); err != nil {
		return cfg, badFlag("manifest-ttl", err)
	}
	if cfg.FillTimeout, err = parseDuration(c.String("fill-timeout")); err != nil {
		return cfg, badFlag("fill-timeout", err)
	}
	if cfg.Resolve, err = parseResolve(c.StringSlice("resolve")); err != nil {
		return cfg, badFlag("resolve", err)
	}
	if cfg.Credentials, err = loadCredentials(c); err != nil {
		return cfg, err
	}
	if cfg.UpstreamProxy, err = parseUpstreamProxy(c.String("upstream-proxy")); err != nil {
		return cfg, badFlag("upstream-proxy", err)
	}
	if cfg.UpstreamRoots, err = loadRoots(c.String("upstream-ca")); err != nil {
		return cfg, badFlag("upstream-ca", err)
	}
	cfg.Registries = splitList(c.String("registries"))
	if len(cfg.Registries) == 0 {
		return cfg, badFlag("registries", fmt.Errorf("empty list"))
	}
	if err := proxy.CheckRegistries(cfg.Registries); err != nil {
		return cfg, badFlag("registries", err)
	}
	if cfg.Logger, err = newLogger(c.String("log-format"), c.String("log-level"), c.App.ErrWriter); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func serve(c *cli.Context) error {
	// urfave/cli ignores arguments: `--registries docker.io quay.io` would
	// silently drop quay.io.
	if c.Args().Present() {
		return cli.Exit(fmt.Sprintf("unexpected argument %q: serve takes only flags; quote lists (--registries \"a b\")", c.Args().First()), 2)
	}
	cfg, err := serveConfig(c)
	if err != nil {
		return err
	}
	if cfg.CA, err = loadCA(c); err != nil {
		return err
	}
	dataDir := c.String("data-dir")
	if cfg.Store, err = cachestore.NewDisk(filepath.Join(dataDir, "cache")); err != nil {
		return cli.Exit(fmt.Sprintf("cache in %s: %v", dataDir, err), 1)
	}
	p, err := proxy.New(cfg)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return cli.Exit(fmt.Sprintf("--listen: %v", err), 1)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg.Logger.Info("regproxy serving", "listen", ln.Addr().String(), "data_dir", dataDir,
		"registries", cfg.Registries, "manifest_ttl", cfg.ManifestTTL.String(), "ca_sha256", fingerprint(cfg.CA.(*ca.CA)), "version", version)
	err = p.Serve(ctx, ln)
	cfg.Logger.Info("regproxy stopped")
	return err
}

// fingerprint is the SHA-256 of the CA certificate, for admins to compare
// with what their nodes trust.
func fingerprint(authority *ca.CA) string {
	sum := sha256.Sum256(authority.Certificate().Raw)
	return hex.EncodeToString(sum[:])
}
