package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/metrics"
)

// summaryFlag sets how often serve logs a summary line (see summarize).
func summaryFlag() cli.Flag {
	return &cli.StringFlag{Name: "log-summary-interval", Value: "5m", EnvVars: env("log-summary-interval"),
		Usage: "log a summary line this often: requests, hit ratio and bytes saved since the last one, fills in flight, cache size; 0 turns it off"}
}

// summaryInterval reads --log-summary-interval: a duration, or 0 for none.
func summaryInterval(c *cli.Context) (time.Duration, error) {
	s := c.String("log-summary-interval")
	if s == "0" {
		return 0, nil
	}
	d, err := parseDuration(s)
	if err != nil {
		return 0, badFlag("log-summary-interval", fmt.Errorf("%w, or 0 for none", err))
	}
	return d, nil
}

// startSummary logs a summary of m every interval (none for 0) until
// stop is called.
func startSummary(m *metrics.Metrics, every time.Duration, log *slog.Logger) (stop func()) {
	if every <= 0 {
		return func() {}
	}
	start, _ := m.Snapshot() // the first line counts from now
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		summarize(ctx, m, start, every, log)
	}()
	return func() { cancel(); <-done }
}

// summarize logs one line every interval until ctx ends: what the
// interval brought since last (requests, hit ratio, bytes served, fetched
// upstream and saved) and the state now (fills in flight and, when the
// eviction index reports it, the cache's size). The figures are those of
// /metrics.
func summarize(ctx context.Context, m *metrics.Metrics, last metrics.Snapshot, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now, err := m.Snapshot()
		if err != nil {
			log.Warn("summary: cannot read the metrics", "err", err)
			continue
		}
		log.LogAttrs(ctx, slog.LevelInfo, "summary", summaryAttrs(now.Since(last), every)...)
		last = now
	}
}

// summaryAttrs are the fields of a summary line. hit_ratio is left out of
// an interval without a cacheable request.
func summaryAttrs(s metrics.Snapshot, every time.Duration) []slog.Attr {
	attrs := []slog.Attr{
		slog.Duration("interval", every),
		slog.Int64("requests", int64(s.Requests)),
	}
	if s.CacheRequests > 0 {
		attrs = append(attrs, slog.String("hit_ratio", fmt.Sprintf("%.3f", s.HitRatio())))
	}
	attrs = append(attrs,
		slog.Int64("bytes_served", int64(s.ServedBytes)),
		slog.Int64("bytes_upstream", int64(s.UpstreamBytes)),
		slog.Int64("bytes_saved", int64(s.BytesSaved())),
		slog.Int64("fills_in_flight", int64(s.FillsInFlight)))
	if c := s.Cache; c != nil {
		total := c.Total()
		attrs = append(attrs, slog.Int64("cache_bytes", total.Bytes), slog.Int64("cache_entries", total.Entries))
		if c.MaxBytes > 0 {
			attrs = append(attrs, slog.Int64("cache_max_bytes", c.MaxBytes))
		}
	}
	return attrs
}
