package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/evict"
)

// The cache commands work on the cache serve keeps, chosen with serve's
// own flags: DATA_DIR/cache, or with --storage azure the container (and
// the local tier in DATA_DIR/cache, for rm and verify). A server may be
// running on it, so they open it without sweeping anything (the server's
// fills in progress live in cache/tmp, or DATA_DIR/spool), and remove
// entries with the store's conditional delete only, which on disk leaves
// directories in place and on Azure deletes a blob only if it still has
// the ETag it was chosen with.

// cacheBackend is what the cache commands need of a store: the disk store
// and the Azure store have all of it.
type cacheBackend interface {
	cachestore.Store
	cachestore.Walker
	cachestore.Stater
	cachestore.CondDeleter
}

// cacheStore is the cache a command works on.
type cacheStore struct {
	backend cacheBackend
	where   string           // for messages: the directory or the container
	disk    *cachestore.Disk // with --storage disk, the store itself
	// local is, with --storage azure, the local tier DATA_DIR/cache if it
	// exists (serve's --disk-cache-size): rm and verify remove from it too,
	// so that a server does not serve from it what they removed.
	local *cachestore.Disk
	close func() error
}

// cacheFlags are the flags every cache command takes: where the cache is,
// as serve is told, and --json.
func cacheFlags(extra ...cli.Flag) []cli.Flag {
	flags := []cli.Flag{dataDirFlag()}
	flags = append(flags, storageFlags()...)
	flags = append(flags,
		&cli.StringFlag{Name: "upstream-proxy", EnvVars: env("upstream-proxy"),
			Usage: "serve's --upstream-proxy, through which --storage azure is reached"},
		&cli.BoolFlag{Name: "json", Usage: "print JSON, for scripts"})
	return append(flags, extra...)
}

// openCache opens the cache the flags name. A cache that is not there is
// exit 1; bad flags are exit 2.
func openCache(c *cli.Context) (*cacheStore, error) {
	dataDir := c.String("data-dir")
	dir := filepath.Join(dataDir, "cache")
	switch kind := c.String("storage"); kind {
	case "disk":
		for _, name := range azureFlags {
			if c.IsSet(name) {
				return nil, badFlag(name, errors.New("needs --storage azure"))
			}
		}
		disk, err := cachestore.OpenDisk(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, cli.Exit(fmt.Sprintf("no cache in %s (serve creates it)", dir), 1)
		}
		if err != nil {
			return nil, cli.Exit(err.Error(), 1)
		}
		return &cacheStore{backend: disk, where: dir, disk: disk, close: func() error { return nil }}, nil
	case "azure":
		if _, err := diskCacheSize(c); err != nil {
			return nil, err
		}
		cfg, err := azureConfig(c)
		if err != nil {
			return nil, err
		}
		store, err := newAzure(c, cfg)
		if err != nil {
			return nil, err
		}
		cs := &cacheStore{backend: store, where: "azure " + cfg.String(), close: store.Close}
		if local, err := cachestore.OpenDisk(dir); err == nil {
			cs.local = local
		}
		return cs, nil
	default:
		return nil, badFlag("storage", fmt.Errorf("%q: want disk or azure", kind))
	}
}

// index loads an eviction index of the store (one walk), that records no
// use and hears of no commit: it is the command's, for one pass.
func (cs *cacheStore) index(c *cli.Context, cfg evict.Config) (*evict.Index, error) {
	cfg.Logger = slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg.Now = cacheNow
	ix := evict.New(indexStore{cs.backend}, cfg)
	if err := ix.Load(c.Context); err != nil {
		return nil, cli.Exit(err.Error(), 1)
	}
	return ix, nil
}

// indexStore is a cacheBackend as an evict.Store whose index writes no
// last use (the command's own reads are none) and hears of no commit.
type indexStore struct{ cacheBackend }

func (indexStore) Touch(context.Context, string, time.Time) error { return nil }
func (indexStore) Observe(cachestore.Observer)                    {}

// cacheNow is the cache commands' clock; tests fix it.
var cacheNow = time.Now

// noArgs refuses arguments to a cache command that takes only flags.
func noArgs(c *cli.Context) error {
	if c.Args().Present() {
		return cli.Exit(fmt.Sprintf("unexpected argument %q: cache %s takes only flags", c.Args().First(), c.Command.Name), 2)
	}
	return nil
}
