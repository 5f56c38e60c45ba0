package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/evict"
)

// The cache command works on DATA_DIR/cache beside a server that may be
// running on it: it opens the store without sweeping the spool (the
// server's fills in progress live there), and evicts with the same
// conditional deletes as the server, which leave directories in place.

func cacheCommand() *cli.Command {
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "print JSON, for scripts"}
	return &cli.Command{
		Name:   "cache",
		Usage:  "inspect or trim the disk cache (also while serve runs on it)",
		Action: unknownCommand,
		Subcommands: []*cli.Command{{
			Name:         "stats",
			Usage:        "entries and bytes by kind, last uses and free space",
			Flags:        []cli.Flag{dataDirFlag(), jsonFlag},
			OnUsageError: usageError,
			Action:       cacheStats,
		}, {
			Name:  "gc",
			Usage: "evict now: down to --max-size, or what was not used for --older-than",
			Flags: []cli.Flag{
				dataDirFlag(),
				&cli.StringFlag{Name: "max-size", Usage: "evict, least recently used first, until the cache holds at most SIZE (e.g. 100G)"},
				&cli.StringFlag{Name: "older-than", Usage: "evict blobs and manifests not used for DURATION, and tag records not validated for it (e.g. 30d)"},
				&cli.StringFlag{Name: "manifest-ttl", Value: "1h", EnvVars: env("manifest-ttl", "MANIFEST_CACHE_DEFAULT_TIME"),
					Usage: "serve's --manifest-ttl: tag records older than this may go to make room for --max-size"},
				jsonFlag,
			},
			OnUsageError: usageError,
			Action:       cacheGC,
		}},
	}
}

// cacheFreeSpace reports the free space of the cache's filesystem; tests
// replace it to make the output reproducible.
var cacheFreeSpace = (*cachestore.Disk).FreeSpace

// openIndex opens DATA_DIR/cache and loads its index.
func openIndex(c *cli.Context, cfg evict.Config) (*cachestore.Disk, *evict.Index, error) {
	if c.Args().Present() {
		return nil, nil, cli.Exit(fmt.Sprintf("unexpected argument %q: cache %s takes only flags", c.Args().First(), c.Command.Name), 2)
	}
	dir := filepath.Join(c.String("data-dir"), "cache")
	disk, err := cachestore.OpenDisk(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, cli.Exit(fmt.Sprintf("no cache in %s (serve creates it)", dir), 1)
	}
	if err != nil {
		return nil, nil, cli.Exit(err.Error(), 1)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ix := evict.New(disk, cfg)
	if err := ix.Load(c.Context); err != nil {
		return nil, nil, cli.Exit(err.Error(), 1)
	}
	return disk, ix, nil
}

// statsOutput is what cache stats prints.
type statsOutput struct {
	Blobs     evict.KindStats  `json:"blobs"`
	Manifests evict.KindStats  `json:"manifests"`
	Tags      evict.KindStats  `json:"tags"`
	Other     *evict.KindStats `json:"other,omitempty"`
	Total     evict.KindStats  `json:"total"`
	// OldestUse and NewestUse are of blobs and manifests; null when there
	// is none.
	OldestUse *time.Time `json:"oldestUse"`
	NewestUse *time.Time `json:"newestUse"`
	// Free and FilesystemSize are of the cache's filesystem; null when
	// they cannot be read.
	Free           *int64 `json:"free"`
	FilesystemSize *int64 `json:"filesystemSize"`
}

func cacheStats(c *cli.Context) error {
	disk, ix, err := openIndex(c, evict.Config{})
	if err != nil {
		return err
	}
	st := ix.Stats()
	out := statsOutput{Blobs: st.Blobs, Manifests: st.Manifests, Tags: st.Tags,
		Total: evict.KindStats{Entries: st.Entries, Bytes: st.Bytes}}
	if st.Other.Entries > 0 {
		out.Other = &st.Other
	}
	if !st.OldestUse.IsZero() {
		oldest, newest := st.OldestUse.UTC(), st.NewestUse.UTC()
		out.OldestUse, out.NewestUse = &oldest, &newest
	}
	if avail, size, err := cacheFreeSpace(disk); err == nil {
		out.Free, out.FilesystemSize = &avail, &size
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	return printStats(c.App.Writer, out)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printStats(w io.Writer, s statsOutput) error {
	fmt.Fprintf(w, "%-10s %9s %11s\n", "", "entries", "size")
	row := func(name string, k evict.KindStats) {
		fmt.Fprintf(w, "%-10s %9d %11s\n", name, k.Entries, humanSize(k.Bytes))
	}
	row("blobs", s.Blobs)
	row("manifests", s.Manifests)
	row("tags", s.Tags)
	if s.Other != nil {
		row("other", *s.Other)
	}
	row("total", s.Total)
	if s.OldestUse != nil {
		fmt.Fprintf(w, "last use: oldest %s, newest %s (UTC)\n", s.OldestUse.Format(time.DateTime), s.NewestUse.Format(time.DateTime))
	}
	if s.Free != nil {
		fmt.Fprintf(w, "free space: %s of %s\n", humanSize(*s.Free), humanSize(*s.FilesystemSize))
	}
	return nil
}

// gcOutput is what cache gc prints.
type gcOutput struct {
	Evicted evict.Result    `json:"evicted"`
	Cache   evict.KindStats `json:"cache"`
}

func cacheGC(c *cli.Context) error {
	var maxSize int64 = -1
	var olderThan time.Duration
	var err error
	if s := c.String("max-size"); s != "" {
		if maxSize, err = parseSize(s); err != nil {
			return badFlag("max-size", err)
		}
	}
	if s := c.String("older-than"); s != "" {
		if olderThan, err = parseDuration(s); err != nil {
			return badFlag("older-than", err)
		}
	}
	if maxSize < 0 && olderThan == 0 {
		return cli.Exit("cache gc: give --max-size, --older-than or both", 2)
	}
	ttl, err := parseDuration(c.String("manifest-ttl"))
	if err != nil {
		return badFlag("manifest-ttl", err)
	}
	_, ix, err := openIndex(c, evict.Config{ManifestTTL: ttl})
	if err != nil {
		return err
	}
	var out gcOutput
	if olderThan > 0 {
		out.Evicted = ix.EvictUnusedSince(c.Context, time.Now().Add(-olderThan))
	}
	if maxSize >= 0 {
		r := ix.Trim(c.Context, maxSize)
		out.Evicted.Entries += r.Entries
		out.Evicted.Bytes += r.Bytes
	}
	st := ix.Stats()
	out.Cache = evict.KindStats{Entries: st.Entries, Bytes: st.Bytes}
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	_, err = fmt.Fprintf(c.App.Writer, "evicted %s (%s); the cache holds %s (%s)\n",
		entries(out.Evicted.Entries), humanSize(out.Evicted.Bytes), entries(out.Cache.Entries), humanSize(out.Cache.Bytes))
	return err
}

func entries(n int) string {
	if n == 1 {
		return "1 entry"
	}
	return fmt.Sprintf("%d entries", n)
}
