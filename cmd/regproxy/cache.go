package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/evict"
	"github.com/regproxy/regproxy/internal/bytesize"
	"github.com/regproxy/regproxy/metrics"
)

// regproxy cache inspects and trims the cache serve keeps, on disk or in
// Azure (see cache_store.go for how it opens it beside a running server):
// stats and gc here, ls in cache_ls.go, rm in cache_rm.go, verify in
// cache_verify.go. Every command prints for people, or JSON with --json.
// Exit codes: 0; 1 for a failure, a name or digest not in the cache, or
// a corrupt entry found; 2 for bad usage.

func cacheCommand() *cli.Command {
	return &cli.Command{
		Name:   "cache",
		Usage:  "inspect or trim the cache (also while serve runs on it)",
		Action: unknownCommand,
		Subcommands: []*cli.Command{{
			Name:      "stats",
			Usage:     "entries and bytes by kind, last uses, free space, and with --server the server's hit ratio and bytes saved",
			ArgsUsage: " ",
			Flags: cacheFlags(&cli.StringFlag{Name: "server",
				Usage: "URL of the proxy port of a server running on this cache (e.g. http://127.0.0.1:3128): add its hit ratio and bytes saved since it started, read from its /metrics"}),
			OnUsageError: usageError,
			Action:       cacheStats,
		},
			cacheLsCommand(),
			cacheRmCommand(),
			{
				Name:      "gc",
				Usage:     "evict now: down to --max-size, or what was not used for --older-than",
				ArgsUsage: " ",
				Flags: cacheFlags(
					&cli.StringFlag{Name: "max-size", Usage: "evict, least recently used first, until the cache holds at most SIZE (e.g. 100G)"},
					&cli.StringFlag{Name: "older-than", Usage: "evict blobs and manifests not used for DURATION, and tag records not validated for it (e.g. 30d)"},
					manifestTTLFlag("serve's --manifest-ttl: tag records written before TTL rules that are older than this may go to make room for --max-size"),
				),
				OnUsageError: usageError,
				Action:       cacheGC,
			},
			cacheVerifyCommand(),
		},
	}
}

// cacheFreeSpace reports the free space of the cache's filesystem; tests
// replace it to make the output reproducible.
var cacheFreeSpace = (*cachestore.Disk).FreeSpace

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
	// they cannot be read (and with --storage azure).
	Free           *int64 `json:"free"`
	FilesystemSize *int64 `json:"filesystemSize"`
	// Server is what --server reported; absent without it.
	Server *serverStats `json:"server,omitempty"`
}

// serverStats is what a server's /metrics says of it, or why it could not
// be read.
type serverStats struct {
	URL   string `json:"url"`
	Error string `json:"error,omitempty"`
	*ServerFigures
}

// ServerFigures are a server's figures since it started.
type ServerFigures struct {
	Started *time.Time `json:"started"`
	// CacheRequests are the requests the cache could answer (outcome hit,
	// miss, joined, stale, revalidated), and Hits those of them that
	// needed no fetch of their own: HitRatio is the one over the other.
	CacheRequests int64   `json:"cacheRequests"`
	Hits          int64   `json:"hits"`
	HitRatio      float64 `json:"hitRatio"`
	// ServedBytes are the bytes sent to clients, UpstreamBytes those
	// fetched upstream, and SavedBytes the one less the other.
	ServedBytes   int64 `json:"servedBytes"`
	UpstreamBytes int64 `json:"upstreamBytes"`
	SavedBytes    int64 `json:"savedBytes"`
}

func cacheStats(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	server, err := serverURL(c.String("server"))
	if err != nil {
		return err
	}
	cs, err := openCache(c)
	if err != nil {
		return err
	}
	defer cs.close()
	ix, err := cs.index(c, evict.Config{})
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
	if cs.disk != nil {
		if avail, size, err := cacheFreeSpace(cs.disk); err == nil {
			out.Free, out.FilesystemSize = &avail, &size
		}
	}
	if server != "" {
		out.Server = scrapeServer(c.Context, server)
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	return printStats(c.App.Writer, out)
}

// serverURL reads --server: a URL, or HOST:PORT for http://HOST:PORT. ""
// is none.
func serverURL(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	raw := s
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err == nil && (u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "") {
		err = errors.New("want the proxy port's URL, e.g. http://127.0.0.1:3128")
	}
	if err != nil {
		return "", badFlag("server", fmt.Errorf("%q: %v", s, err))
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// serverTimeout bounds the scrape of a server's /metrics.
const serverTimeout = 5 * time.Second

// scrapeServer reads the figures of the server at base from its /metrics.
// A server that does not answer is reported, not an error: the stats of
// the cache stand without it.
func scrapeServer(ctx context.Context, base string) *serverStats {
	s := &serverStats{URL: base}
	ctx, cancel := context.WithTimeout(ctx, serverTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		s.Error = err.Error()
		return s
	}
	// The proxy port itself, never through a proxy of the environment.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		s.Error = "unreachable: " + netReason(err)
		return s
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		s.Error = fmt.Sprintf("GET /metrics: %s", resp.Status)
		return s
	}
	snap, started, err := metrics.ParseSnapshot(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		s.Error = "its /metrics cannot be read: " + netReason(err)
		return s
	}
	if snap.CacheRequests == 0 && snap.Requests == 0 && started.IsZero() {
		s.Error = "its /metrics has no regproxy figures: is it a regproxy?"
		return s
	}
	f := &ServerFigures{
		CacheRequests: int64(snap.CacheRequests), Hits: int64(snap.CacheHits), HitRatio: snap.HitRatio(),
		ServedBytes: int64(snap.ServedBytes), UpstreamBytes: int64(snap.UpstreamBytes), SavedBytes: int64(snap.BytesSaved()),
	}
	if !started.IsZero() {
		f.Started = &started
	}
	s.ServerFigures = f
	return s
}

// netReason is the part of a request's error that says what went wrong,
// without the URL (which the line names already).
func netReason(err error) string {
	var op *net.OpError
	switch {
	case errors.Is(err, context.DeadlineExceeded), os.IsTimeout(err):
		return fmt.Sprintf("no answer within %v", serverTimeout)
	case errors.As(err, &op):
		return op.Err.Error()
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printStats(w io.Writer, s statsOutput) error {
	fmt.Fprintf(w, "%-10s %9s %11s\n", "", "entries", "size")
	row := func(name string, k evict.KindStats) {
		fmt.Fprintf(w, "%-10s %9d %11s\n", name, k.Entries, bytesize.Format(k.Bytes))
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
		fmt.Fprintf(w, "free space: %s of %s\n", bytesize.Format(*s.Free), bytesize.Format(*s.FilesystemSize))
	}
	if s.Server != nil {
		printServer(w, s.Server)
	}
	return nil
}

func printServer(w io.Writer, s *serverStats) {
	if s.ServerFigures == nil {
		fmt.Fprintf(w, "server %s: %s\n", s.URL, s.Error)
		return
	}
	since := ""
	if s.Started != nil {
		since = ", since it started " + s.Started.UTC().Format(time.DateTime) + " (UTC)"
	}
	fmt.Fprintf(w, "server %s%s:\n", s.URL, since)
	if s.CacheRequests == 0 {
		fmt.Fprintln(w, "  hit ratio: no request the cache could answer yet")
	} else {
		fmt.Fprintf(w, "  hit ratio: %.1f%% (%d of %d requests the cache could answer needed no fetch of their own)\n",
			100*s.HitRatio, s.Hits, s.CacheRequests)
	}
	fmt.Fprintf(w, "  bytes saved: %s (%s served, %s fetched upstream)\n",
		bytesize.Format(max(0, s.SavedBytes)), bytesize.Format(s.ServedBytes), bytesize.Format(s.UpstreamBytes))
}

// gcOutput is what cache gc prints.
type gcOutput struct {
	Evicted evict.Result    `json:"evicted"`
	Cache   evict.KindStats `json:"cache"`
}

func cacheGC(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
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
	cs, err := openCache(c)
	if err != nil {
		return err
	}
	defer cs.close()
	ix, err := cs.index(c, evict.Config{ManifestTTL: ttl})
	if err != nil {
		return err
	}
	var out gcOutput
	if olderThan > 0 {
		out.Evicted = ix.EvictUnusedSince(c.Context, cacheNow().Add(-olderThan))
	}
	if maxSize >= 0 {
		out.Evicted.Add(ix.Trim(c.Context, maxSize))
	}
	st := ix.Stats()
	out.Cache = evict.KindStats{Entries: st.Entries, Bytes: st.Bytes}
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	_, err = fmt.Fprintf(c.App.Writer, "evicted %s (%s); the cache holds %s (%s)\n",
		entries(out.Evicted.Entries), bytesize.Format(out.Evicted.Bytes), entries(out.Cache.Entries), bytesize.Format(out.Cache.Bytes))
	return err
}

func entries(n int) string {
	if n == 1 {
		return "1 entry"
	}
	return fmt.Sprintf("%d entries", n)
}
