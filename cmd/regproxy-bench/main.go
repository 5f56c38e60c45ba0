// Command regproxy-bench measures a real `regproxy serve` process and prints
// a markdown table of the results against their targets.
//
// It builds regproxy from the work tree, runs it on a free loopback port
// with a fresh data dir, and puts an in-process TLS registry (upstream.go)
// behind it under the name registry.test. Clients reach that name through
// regproxy as nodes do: CONNECT, then TLS with regproxy's CA as the only
// root. The scenarios (scenarios.go, storm.go, soak*.go) are warm-hit
// throughput against a plain Go TLS file server, cold-pull overhead against
// the upstream itself, a 32-client cold storm on a throttled upstream,
// tag-manifest hit latency, regproxy's peak RSS after a large storm, a
// soak: hundreds of clients mixing every kind of request for minutes while
// the upstream fails at random, and --storage azure against Azurite
// (azure.go): warm hits from Azure against the azblob SDK reading the same
// blob, how soon a fill is committed in Azure, and peak RSS. Where nginx is
// installed, it runs as a peer (nginx.go): a proxy_cache configured as
// rpardini/docker-registry-proxy configures it, measured in the same run for
// warm hits, the storm and tag hits.
//
// Usage:
//
//	go run ./cmd/regproxy-bench [-quick] [-out FILE] [-run LETTERS] [-soak DURATION] [-soak-clients N] [-nginx PATH|off]
//
// Progress goes to stderr, the table to stdout (and to FILE with -out).
// With REGPROXY_BENCH_PERF=DIR set, each scenario also records a perf(1)
// CPU profile of regproxy into DIR (profile.go). Scenario g needs
// azurite-blob from scripts/install-test-deps.sh (.cache/azurite); without it
// its row says so, as the nginx rows do without nginx.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// config is the size of each scenario.
type config struct {
	quick bool
	out   string // also write the report here, if set
	only  string // the letters of the scenarios to run; empty means all

	warmSize int64 // a: the cached blob
	warmRuns int   // a: timed runs per client and stream count
	streams  int   // a: concurrent streams of the parallel row

	coldSize int64 // b: each cold blob
	coldRuns int   // b: fresh blobs pulled

	stormSize    int64 // c: the cold blob
	stormClients int   // c: clients starting at once
	stormRate    int64 // c: upstream bytes/s for the storm's response

	manifestGets int // d: sequential GETs of the cached tag

	rssSize    int64 // e: the cold blob of the RSS storm
	rssClients int   // e: its clients

	soak            time.Duration // f: how long the clients run
	soakClients     int           // f: concurrent clients
	soakWarmBlobs   int           // f: cached blobs the hits read
	soakWarmMax     int64         // f: the largest of them (the smallest is 256 KiB)
	soakFreshBudget int64         // f: total size of fresh blobs; misses past it become hits

	azureSize    int64 // g: the blob of the Azure fills and warm hits
	azureFills   int   // g: cold fills timed
	azureRuns    int   // g: timed warm-hit runs per side and stream count
	azureRSSSize int64 // g: the cold blob of the Azure RSS storm (of rssClients)

	nginx string // -nginx: "" to look for nginx, "off", or its path
}

const mib = 1 << 20

// fullConfig is the benchmark as its targets are stated.
func fullConfig() config {
	return config{
		warmSize: 256 * mib, warmRuns: 7, streams: 8,
		coldSize: 256 * mib, coldRuns: 3,
		stormSize: 64 * mib, stormClients: 32, stormRate: 40e6,
		manifestGets: 2000,
		rssSize:      512 * mib, rssClients: 32,
		soak: 3 * time.Minute, soakClients: 200, soakWarmBlobs: 16, soakWarmMax: 8 * mib, soakFreshBudget: 4 << 30,
		azureSize: 256 * mib, azureFills: 3, azureRuns: 5, azureRSSSize: 512 * mib,
	}
}

// quickConfig is a smoke run: every scenario, on small blobs.
func quickConfig() config {
	return config{
		quick:    true,
		warmSize: 32 * mib, warmRuns: 3, streams: 8,
		coldSize: 32 * mib, coldRuns: 3,
		stormSize: 32 * mib, stormClients: 32, stormRate: 40e6,
		manifestGets: 200,
		rssSize:      32 * mib, rssClients: 32,
		soak: 10 * time.Second, soakClients: 50, soakWarmBlobs: 8, soakWarmMax: 4 * mib, soakFreshBudget: 512 * mib,
		azureSize: 32 * mib, azureFills: 2, azureRuns: 3, azureRSSSize: 32 * mib,
	}
}

func (c config) mode() string {
	if c.quick {
		return "quick"
	}
	return "full"
}

// totalTimeout bounds a whole run, less the soak; a full run takes a few
// minutes plus the soak.
const totalTimeout = 15 * time.Minute

func main() {
	quick := flag.Bool("quick", false, "smoke run: 32 MiB blobs, 200 manifest requests, a 10 s soak of 50 clients")
	out := flag.String("out", "", "also write the report to this file")
	only := flag.String("run", "", "run only these scenarios, by letter (e.g. \"cd\"); default all of abcdefg")
	soak := flag.Duration("soak", 0, "how long scenario f's clients run (default 3m, or 10s with -quick)")
	soakClients := flag.Int("soak-clients", 0, "scenario f's concurrent clients (default 200, or 50 with -quick)")
	ngx := flag.String("nginx", "", "the nginx binary of the peer, or off; default: nginx on PATH or in /usr/sbin")
	flag.Parse()
	cfg := fullConfig()
	if *quick {
		cfg = quickConfig()
	}
	cfg.out, cfg.only, cfg.nginx = *out, *only, *ngx
	if *soak > 0 {
		cfg.soak = *soak
	}
	if *soakClients > 0 {
		cfg.soakClients = *soakClients
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cfg, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "regproxy-bench:", err)
		os.Exit(1)
	}
}

// run builds and starts everything, runs the scenarios, and writes the
// report to stdout (and cfg.out). Progress goes to progress. Whatever
// happens, the child processes are stopped and the temporary files removed
// before it returns; the rows measured before an error are still reported.
func run(ctx context.Context, cfg config, stdout, progress io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, totalTimeout+cfg.soak)
	defer cancel()
	dir, err := os.MkdirTemp("", "regproxy-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	m := describeMachine(ctx)
	b, err := setup(ctx, cfg, dir, progress)
	if err != nil {
		return err
	}
	defer b.close()
	rows, runErr := b.runAll(ctx)
	if len(rows) == 0 {
		return runErr
	}
	report := render(m, cfg, rows)
	if _, err := io.WriteString(stdout, report); err != nil {
		return err
	}
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(report), 0o644); err != nil {
			return err
		}
	}
	return runErr
}
