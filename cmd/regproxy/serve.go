package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"

	"github.com/regproxy/regproxy/ca"
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
	if cfg.FillStallTimeout, err = parseDuration(c.String("fill-stall-timeout")); err != nil {
		return cfg, badFlag("fill-stall-timeout", err)
	}
	if cfg.ShutdownGrace, err = parseDuration(c.String("shutdown-grace")); err != nil {
		return cfg, badFlag("shutdown-grace", err)
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
	if err := tunnelConfig(c, &cfg); err != nil {
		return cfg, err
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
	// Read after the logger exists: skipped entries are logged as warnings.
	if file := c.String("htpasswd"); file != "" {
		if cfg.Users, err = proxy.LoadHtpasswd(file, cfg.Logger); err != nil {
			return cfg, badFlag("htpasswd", err)
		}
	}
	return cfg, nil
}

// warnIfOpen warns when the proxy port listens beyond loopback and asks
// for no credentials: every host that reaches it may use it.
func warnIfOpen(log *slog.Logger, addr net.Addr, users *proxy.Htpasswd) {
	if tcp, ok := addr.(*net.TCPAddr); users != nil || (ok && tcp.IP.IsLoopback()) {
		return
	}
	log.Warn("the proxy port asks for no credentials and is not on loopback: anyone who reaches it can pull cached images, pull with any configured registry credentials and open tunnels; set --htpasswd, or listen on 127.0.0.1",
		"listen", addr.String())
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
	summaryEvery, err := summaryInterval(c) // checked before anything touches the disk
	if err != nil {
		return err
	}
	if cfg.CA, err = loadCA(c, cfg.Registries, cfg.Logger); err != nil {
		return err
	}
	dataDir := c.String("data-dir")
	st, err := openStore(c, dataDir, cfg.Logger) // before the port opens: a store that fails stops serve
	if err != nil {
		return err
	}
	defer st.Close()
	cfg.Store, cfg.SpoolDir = st.Store, st.SpoolDir
	p, err := proxy.New(cfg)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	// Before Serve: the index must see every commit and read.
	stopEviction, err := startEviction(c, cfg.Store, cfg.ManifestTTL, cfg.Logger, p.Metrics())
	if err != nil {
		return err
	}
	defer stopEviction() // before st.Close: the index writes last uses as it stops
	defer startSummary(p.Metrics(), summaryEvery, cfg.Logger)()
	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return cli.Exit(fmt.Sprintf("--listen: %v", err), 1)
	}
	// Signals are caught from before the line that says regproxy serves.
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	warnIfOpen(cfg.Logger, ln.Addr(), cfg.Users)
	cfg.Logger.Info("regproxy serving", "listen", ln.Addr().String(), "data_dir", dataDir,
		"registries", cfg.Registries, "manifest_ttl", cfg.ManifestTTL.String(), "ca_sha256", fingerprint(cfg.CA.(*ca.CA)),
		"htpasswd_users", cfg.Users.Len(), "version", version)
	err = runProxy(ctx, stop, p, ln, cfg.ShutdownGrace, cfg.Logger)
	cfg.Logger.Info("regproxy stopped")
	return err
}

// runProxy serves p on ln until ctx ends (SIGINT or SIGTERM), then shuts
// it down: responses in flight get grace to finish and are cut after it.
// The servers' errgroup is p.Serve's; this one pairs it with the
// shutdown, as spegel's run does.
//
// When ctx ends, runProxy calls stopSignals, which restores the signals'
// default action: a second SIGINT or SIGTERM kills the process at once
// (its wait status says killed by that signal; a shell reports 130 or
// 143). What that leaves in the spool is swept at the next start.
func runProxy(ctx context.Context, stopSignals func(), p *proxy.Proxy, ln net.Listener, grace time.Duration, log *slog.Logger) error {
	g, gctx := errgroup.WithContext(ctx)
	// Serve returns once the Shutdown below begins, or when a server fails.
	g.Go(func() error { return p.Serve(context.WithoutCancel(gctx), ln) })
	g.Go(func() error {
		<-gctx.Done()
		stopSignals() // before the line below, which tells tests a second signal kills
		log.Info("shutting down", "cause", context.Cause(gctx).Error(), "grace", grace.String())
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		p.Shutdown(sctx) // a grace that ran out is logged there; the exit status stays 0
		return nil
	})
	return g.Wait()
}
