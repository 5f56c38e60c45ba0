package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/azure"
	"github.com/regproxy/regproxy/cachestore/tiered"
	"github.com/regproxy/regproxy/internal/bytesize"
)

// storageFlags choose where serve keeps the cache (see openStore).
func storageFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "storage", Value: "disk", EnvVars: env("storage"),
			Usage: "disk (DATA_DIR/cache) or azure (one Azure Blob Storage container, which several regproxy replicas may share)"},
		&cli.StringFlag{Name: "azure-account-name", EnvVars: env("azure-account-name"), Usage: "storage account of --storage azure"},
		&cli.StringFlag{Name: "azure-account-key", EnvVars: env("azure-account-key"),
			Usage: "the account's shared key, base64 (set REGPROXY_AZURE_ACCOUNT_KEY rather, which ps does not show); with no key and no connection string, the Azure default credential chain (workload identity, managed identity)"},
		&cli.StringFlag{Name: "azure-container", Value: azure.DefaultContainer, EnvVars: env("azure-container"),
			Usage: "container that holds the cache; created if missing"},
		&cli.StringFlag{Name: "azure-endpoint", EnvVars: env("azure-endpoint"),
			Usage: "blob service URL, for sovereign clouds or Azurite (default https://ACCOUNT.blob.core.windows.net/)"},
		&cli.StringFlag{Name: "azure-connection-string", EnvVars: env("azure-connection-string"),
			Usage: "instead of the account name, key and endpoint (set REGPROXY_AZURE_CONNECTION_STRING rather, which ps does not show)"},
		&cli.StringFlag{Name: "disk-cache-size", EnvVars: env("disk-cache-size"),
			Usage: "with --storage azure, keep up to SIZE of blobs and manifests on local disk (DATA_DIR/cache) in front of Azure, least recently used evicted first, e.g. 50G (default: none)"},
	}
}

// azureFlags are the flags that only --storage azure reads.
var azureFlags = []string{"azure-account-name", "azure-account-key", "azure-container", "azure-endpoint", "azure-connection-string",
	"disk-cache-size"}

// diskCacheSize reads --disk-cache-size: 0 when it is not set.
func diskCacheSize(c *cli.Context) (int64, error) {
	if !c.IsSet("disk-cache-size") {
		return 0, nil
	}
	n, err := parseSize(c.String("disk-cache-size"))
	if err == nil && n <= 0 {
		err = fmt.Errorf("invalid size %q: want more than 0, e.g. 50G", c.String("disk-cache-size"))
	}
	if err != nil {
		return 0, badFlag("disk-cache-size", err)
	}
	return n, nil
}

// storage is the cache serve hands to the proxy.
type storage struct {
	Store cachestore.Store
	// SpoolDir is where blob fills keep their files while they run; ""
	// means the store's own (the disk store's cache/tmp).
	SpoolDir string
	// Close releases the store once the proxy has stopped.
	Close func() error
}

// openStore builds the store --storage names, and checks it before the
// proxy port opens. A bad flag value is a usage error (exit 2). A store
// that cannot be used (a wrong key, an unreachable endpoint, a container
// that is missing and cannot be created) stops serve with one line and exit
// 1: it never falls back to disk, since replicas that share a container
// would then each keep a cache of their own without anyone noticing.
func openStore(c *cli.Context, dataDir string, log *slog.Logger) (storage, error) {
	switch kind := c.String("storage"); kind {
	case "disk":
		for _, name := range azureFlags {
			if c.IsSet(name) {
				return storage{}, badFlag(name, errors.New("needs --storage azure"))
			}
		}
		disk, err := cachestore.NewDisk(filepath.Join(dataDir, "cache"))
		if err != nil {
			return storage{}, cli.Exit(fmt.Sprintf("cache in %s: %v", dataDir, err), 1)
		}
		return storage{Store: disk, Close: func() error { return nil }}, nil
	case "azure":
		return openAzure(c, dataDir, log)
	default:
		return storage{}, badFlag("storage", fmt.Errorf("%q: want disk or azure", kind))
	}
}

// openAzure connects to the container of the azure flags and prepares the
// local spool, DATA_DIR/spool, emptied of what an earlier process left.
// With --disk-cache-size, DATA_DIR/cache is a local tier in front of the
// container (see cachestore/tiered), which startEviction bounds.
func openAzure(c *cli.Context, dataDir string, log *slog.Logger) (storage, error) {
	localSize, err := diskCacheSize(c)
	if err != nil {
		return storage{}, err
	}
	cfg, err := azureConfig(c)
	if err != nil {
		return storage{}, err
	}
	spool := filepath.Join(dataDir, "spool")
	if err := emptyDir(spool); err != nil {
		return storage{}, cli.Exit(fmt.Sprintf("spool in %s: %v", dataDir, err), 1)
	}
	store, err := newAzure(c, cfg)
	if err != nil {
		return storage{}, err
	}
	if localSize == 0 {
		log.Info("cache in azure", "azure", cfg.String(), "spool", spool)
		return storage{Store: store, SpoolDir: spool, Close: store.Close}, nil
	}
	dir := filepath.Join(dataDir, "cache")
	local, err := cachestore.NewDisk(dir)
	if err != nil {
		store.Close()
		return storage{}, cli.Exit(fmt.Sprintf("local cache in %s: %v", dataDir, err), 1)
	}
	ts := tiered.New(local, store, log)
	log.Info("cache in azure", "azure", cfg.String(), "spool", spool, "disk_cache", dir, "disk_cache_size", bytesize.Format(localSize))
	return storage{Store: ts, SpoolDir: spool, Close: ts.Close}, nil
}

// azureConfig reads the azure flags (and --upstream-proxy, if the command
// has it). A bad value is a usage error.
func azureConfig(c *cli.Context) (azure.Config, error) {
	cfg := azure.Config{
		AccountName:      c.String("azure-account-name"),
		AccountKey:       c.String("azure-account-key"),
		Container:        c.String("azure-container"),
		Endpoint:         c.String("azure-endpoint"),
		ConnectionString: c.String("azure-connection-string"),
	}
	if cfg.AccountName == "" && cfg.ConnectionString == "" {
		return cfg, cli.Exit("--storage azure: needs --azure-account-name (with --azure-account-key, "+
			"or the default credential chain) or --azure-connection-string", 2)
	}
	// Azure is regproxy's own upstream traffic: it goes through the
	// egress proxy too (managed identity tokens excepted).
	var err error
	if cfg.Proxy, err = parseUpstreamProxy(c.String("upstream-proxy")); err != nil {
		return cfg, badFlag("upstream-proxy", err)
	}
	return cfg, nil
}

// newAzure connects to cfg's container: a Config that azure refuses is a
// usage error naming the flag, a container that cannot be used exit 1.
func newAzure(c *cli.Context, cfg azure.Config) (*azure.Store, error) {
	store, err := azure.New(c.Context, cfg)
	if ce, ok := errors.AsType[*azure.ConfigError](err); ok {
		return nil, badFlag(azureFlagOf(ce.Field), ce.Err)
	}
	if err != nil {
		return nil, cli.Exit(err.Error(), 1)
	}
	return store, nil
}

// azureFlagOf names the flag of an azure.Config field.
func azureFlagOf(field string) string {
	switch field {
	case "AccountName":
		return "azure-account-name"
	case "AccountKey":
		return "azure-account-key"
	case "Endpoint":
		return "azure-endpoint"
	case "ConnectionString":
		return "azure-connection-string"
	case "Container":
		return "azure-container"
	}
	return "storage"
}

// emptyDir creates dir if needed and removes everything in it: spool files
// of fills that never finished, which no one will commit.
func emptyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}
