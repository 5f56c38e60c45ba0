package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/evict"
	"github.com/regproxy/regproxy/cachestore/tiered"
	"github.com/regproxy/regproxy/internal/bytesize"
	"github.com/regproxy/regproxy/metrics"
)

// evictFlags bound the disk cache (see startEviction).
func evictFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "cache-max-size", EnvVars: env("cache-max-size", "CACHE_MAX_SIZE"),
			Usage: "most bytes the disk cache may hold, e.g. 500G or 32GiB (K, M, G, T are powers of 1024, KB, MB, GB, TB of 1000); least recently used blobs are evicted first (default: no cap)"},
		&cli.StringFlag{Name: "min-free-space", Value: "5%", EnvVars: env("min-free-space"),
			Usage: "free space to keep on the cache's filesystem, a SIZE or a percentage of the filesystem, evicting as needed; 0 turns it off"},
	}
}

// evictConfig reads the eviction flags.
func evictConfig(c *cli.Context) (evict.Config, error) {
	var cfg evict.Config
	var err error
	if s := c.String("cache-max-size"); s != "" {
		if cfg.MaxSize, err = parseSize(s); err != nil {
			return cfg, badFlag("cache-max-size", err)
		}
	}
	if cfg.MinFree, cfg.MinFreePercent, err = parseMinFree(c.String("min-free-space")); err != nil {
		return cfg, badFlag("min-free-space", err)
	}
	return cfg, nil
}

// startEviction keeps a disk store within the eviction flags' bounds: it
// attaches an index to the store now, before the proxy uses it, and loads
// and runs it in the background, so that the port opens at once however
// large the cache. m reports the index's figures (regproxy_cache_*). stop
// ends it and waits; call it after the proxy stopped, so that the last
// uses of its final requests are written.
//
// With --storage azure, only the local tier of --disk-cache-size is bounded
// here, by that size (and --min-free-space): an Azure container is kept in
// bounds by its lifecycle-management policy (see the README).
func startEviction(c *cli.Context, store cachestore.Store, ttl time.Duration, log *slog.Logger, m *metrics.Metrics) (stop func(), err error) {
	cfg, err := evictConfig(c)
	if err != nil {
		return nil, err
	}
	s, ok := store.(evict.Store)
	if ts, isTiered := store.(*tiered.Store); isTiered {
		s, ok = ts.Local(), true
		if cfg.MaxSize > 0 {
			log.Warn("--cache-max-size does not bound --storage azure: --disk-cache-size bounds its local tier")
		}
		if cfg.MaxSize, err = diskCacheSize(c); err != nil {
			return nil, err
		}
	}
	if !ok {
		if cfg.MaxSize > 0 {
			log.Warn("--cache-max-size bounds only the disk cache: keep an Azure container in bounds with a lifecycle-management policy")
		}
		return func() {}, nil
	}
	cfg.ManifestTTL, cfg.Logger = ttl, log
	ix := evict.New(s, cfg)
	m.SetCacheStats(func() metrics.CacheStats { return metricsStats(ix.Stats()) })
	log.Info("cache bounds", "cache_max_size", sizeOrNone(cfg.MaxSize), "min_free_space", c.String("min-free-space"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := ix.Run(ctx); err != nil {
			log.Error("cache eviction is off", "err", err)
		}
	}()
	return func() { cancel(); <-done }, nil
}

// metricsStats turns the index's figures into those of the metrics.
func metricsStats(s evict.Stats) metrics.CacheStats {
	kind := func(k evict.KindStats) metrics.KindStats {
		return metrics.KindStats{Entries: int64(k.Entries), Bytes: k.Bytes}
	}
	return metrics.CacheStats{
		Blobs: kind(s.Blobs), Manifests: kind(s.Manifests), Tags: kind(s.Tags), Other: kind(s.Other),
		MaxBytes: s.MaxSize, FreeBytes: s.Free, FilesystemBytes: s.FilesystemSize, MinFreeBytes: s.FreeFloor,
		Evicted: kind(s.Evicted), Loaded: s.Loaded,
	}
}

func sizeOrNone(n int64) string {
	if n <= 0 {
		return "none"
	}
	return bytesize.Format(n)
}

// sizeUnits are the unit suffixes parseSize accepts, lowercase. Single
// letters are powers of 1024, as nginx (and so rpardini's CACHE_MAX_SIZE,
// "32g") reads them; "KB" and the like are powers of 1000.
var sizeUnits = map[string]float64{
	"": 1, "b": 1,
	"k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mi": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40, "tb": 1e12,
}

// parseSize reads a size such as 500G, 32GiB, 1.5T or 4096.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	n, err := strconv.ParseFloat(t[:i], 64)
	unit, ok := sizeUnits[strings.ToLower(strings.TrimSpace(t[i:]))]
	if err != nil || !ok || n < 0 || n*unit >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: want e.g. 500G, 32GiB or 800MB", s)
	}
	return int64(n * unit), nil
}

// parseMinFree reads --min-free-space: a size, or a percentage of the
// filesystem.
func parseMinFree(s string) (bytes int64, percent float64, err error) {
	if p, ok := strings.CutSuffix(strings.TrimSpace(s), "%"); ok {
		percent, err = strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || percent < 0 || percent >= 100 {
			return 0, 0, fmt.Errorf("invalid percentage %q: want e.g. 5%%", s)
		}
		return 0, percent, nil
	}
	if bytes, err = parseSize(s); err != nil {
		return 0, 0, fmt.Errorf("invalid size %q: want e.g. 5%%, 10G or 20GiB", s)
	}
	return bytes, 0, nil
}
