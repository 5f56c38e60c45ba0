package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/internal/azuritetest"
)

// Scenario g measures regproxy with --storage azure against Azurite, the
// Azure Blob Storage emulator, in the same run as its peer: the same blob
// downloaded straight from the same Azurite with the azblob SDK's
// DownloadStream, from the bench process. Azurite is started as the tests
// start it (internal/azuritetest: .cache/azurite, installed by
// scripts/install-test-deps.sh), on a free loopback port.

// Targets of scenario g, as issue 11 states them.
const (
	targetAzureHitRatio = 0.90        // warm hit from Azure / DownloadStream
	targetAzureCommit   = time.Second // a fill visible in Azure after its last upstream byte
)

// Bounds of scenario g.
const (
	azureTimeout      = 8 * time.Minute
	azureContainer    = "regproxy-bench"
	azurePollInterval = 10 * time.Millisecond // of the wait for a commit
	azureCommitWait   = time.Minute           // the longest wait for a commit
)

// azurePeer is the bench's own view of the Azurite that regproxy uses: the
// same container, through the azblob SDK with the account's shared key.
type azurePeer struct {
	az      *azuritetest.Azurite
	version string // Azurite's, from its package.json
	pid     int    // Azurite's node process, for its CPU time; 0 if not found
	c       *container.Client
	tr      *http.Transport
}

// startAzurite starts Azurite and a client of its container. No
// azurite-blob is no error: the scenario's one row says so, as for nginx.
func (b *bench) startAzurite() (*azurePeer, string, error) {
	bin, err := azuritetest.Find()
	if err != nil {
		return nil, err.Error(), nil
	}
	az, err := azuritetest.Start()
	if err != nil {
		return nil, "", err
	}
	tr := &http.Transport{
		Proxy:               nil, // Azurite is on loopback, whatever the environment says
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	opts := &container.ClientOptions{ClientOptions: policy.ClientOptions{Transport: &http.Client{Transport: tr}}}
	c, err := container.NewClientFromConnectionString(az.ConnectionString(), azureContainer, opts)
	if err != nil {
		az.Stop()
		return nil, "", err
	}
	return &azurePeer{az: az, version: azuriteVersion(bin), pid: azuritePid(az.Endpoint), c: c, tr: tr}, "", nil
}

// azuritePid finds the azurite-blob process serving endpoint by the port
// on its command line, or returns 0.
func azuritePid(endpoint string) int {
	u, err := url.Parse(endpoint)
	if err != nil {
		return 0
	}
	want := "\x00--blobPort\x00" + u.Port() + "\x00"
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline")); err == nil && strings.Contains(string(b), want) {
			return pid
		}
	}
	return 0
}

func (p *azurePeer) close() {
	p.tr.CloseIdleConnections()
	p.az.Stop()
}

// azuriteVersion reads the version of the azurite package that bin (its
// node_modules/.bin/azurite-blob) belongs to, or "" if it cannot tell.
func azuriteVersion(bin string) string {
	real, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return ""
	}
	// .bin/azurite-blob links to azurite/dist/src/blob/main.js.
	for dir := filepath.Dir(real); dir != filepath.Dir(dir); dir = filepath.Dir(dir) {
		b, err := os.ReadFile(filepath.Join(dir, "package.json"))
		if err != nil {
			continue
		}
		var pkg struct{ Name, Version string }
		if json.Unmarshal(b, &pkg) == nil && pkg.Name == "azurite" {
			return pkg.Version
		}
	}
	return ""
}

// rpFlags are the flags of a regproxy on p's container, with no local tier.
func (p *azurePeer) rpFlags() []string {
	return []string{"--storage", "azure", "--azure-account-name", azuritetest.Account,
		"--azure-account-key", azuritetest.Key, "--azure-endpoint", p.az.Endpoint, "--azure-container", azureContainer}
}

// azureKey is the name of bl's entry in the container.
func azureKey(bl *blob) string { return cachestore.BlobKey(digest.Digest(bl.digest)) }

// download reads bl's entry whole with one DownloadStream, as regproxy's
// clients read bodies (readBufSize at a time), and checks its length.
func (p *azurePeer) download(ctx context.Context, bl *blob) error {
	resp, err := p.c.NewBlobClient(azureKey(bl)).DownloadStream(ctx, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	res, err := drain(resp.Body, time.Now(), nil, bl.size)
	if err == nil && res.bytes != bl.size {
		err = fmt.Errorf("DownloadStream %s: got %d bytes, want %d", azureKey(bl), res.bytes, bl.size)
	}
	return err
}

// waitCommitted polls bl's entry every azurePollInterval until it exists
// and returns when the first answer that found it came back: an upper
// bound of the moment it became visible.
func (p *azurePeer) waitCommitted(ctx context.Context, bl *blob) (time.Time, error) {
	bc := p.c.NewBlobClient(azureKey(bl))
	for range int(azureCommitWait / azurePollInterval) {
		_, err := bc.GetProperties(ctx, nil)
		if err == nil {
			return time.Now(), nil
		}
		if !bloberror.HasCode(err, bloberror.BlobNotFound) {
			return time.Time{}, fmt.Errorf("GetProperties %s: %w", azureKey(bl), err)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(azurePollInterval):
		}
	}
	return time.Time{}, fmt.Errorf("%s not committed in Azure within %v", azureKey(bl), azureCommitWait)
}

// commitLag waits until bl is committed and returns how long after the
// upstream's last byte of it that was.
func (p *azurePeer) commitLag(ctx context.Context, bl *blob) (time.Duration, error) {
	at, err := p.waitCommitted(ctx, bl)
	if err != nil {
		return 0, err
	}
	last := bl.lastSent.Load()
	if last == 0 {
		return 0, errors.New("the upstream never finished sending the blob")
	}
	return at.Sub(time.Unix(0, last)), nil
}

// azure is scenario g. It starts Azurite and a regproxy with --storage
// azure and no local tier, then measures: cold fills, and when each is
// committed in Azure after its last upstream byte; warm hits served from
// Azure against DownloadStream from the same Azurite, 1 stream and
// cfg.streams at once; and a fresh regproxy's peak RSS while cfg.rssClients
// clients pull one cold cfg.azureRSSSize blob.
func (b *bench) azure(ctx context.Context) ([]row, error) {
	ctx, cancel := context.WithTimeout(ctx, azureTimeout)
	defer cancel()
	what := "g. Azure backend (`--storage azure`, no local tier) against Azurite; peer: the azblob SDK's DownloadStream from the bench process"
	p, why, err := b.startAzurite()
	if err != nil {
		return nil, err
	}
	if p == nil {
		b.logf("note: scenario g not run: %s", why)
		return []row{{metric: what, value: "not run: " + why}}, nil
	}
	defer p.close()
	rows := []row{{metric: what, value: "Azurite " + orDash(p.version)}}
	b.logf("  Azurite %s at %s", p.version, p.az.Endpoint)
	opts := defaultRP
	opts.extra = p.rpFlags()
	rp, err := startRegproxy(ctx, b.bins.regproxy, b.dir, b.up, b.pki.caFile, opts)
	if err != nil {
		return rows, err
	}
	defer b.stopProxy(rp)
	b.logf("  regproxy --storage azure: pid %d on %s", rp.cmd.Process.Pid, rp.addr)
	stop := b.profile(rp.proc, "g-azure-fills-hits")
	r, err := b.azureFillsAndHits(ctx, p, rp)
	stop()
	rows = append(rows, r...)
	if err != nil {
		return rows, err
	}
	b.stopProxy(rp)
	r, err = b.azureRSS(ctx, p, opts)
	return append(rows, r...), err
}

// stopProxy stops rp and passes on the warnings and errors at the end of
// its log. Stopping it again does nothing.
func (b *bench) stopProxy(rp *regproxy) {
	if !rp.running() {
		return
	}
	rp.stop()
	if tail := rp.tail(); tail != "" {
		b.logf("regproxy pid %d logged (end of its log, less INFO):\n%s", rp.cmd.Process.Pid, tail)
	}
}

// azureFillsAndHits pulls cfg.azureFills fresh blobs through rp from the
// unthrottled upstream, then one at cfg.stormRate, each committed in Azure
// before the next, and measures Azurite's own ingest rate with the same
// bytes. Then it compares warm hits of the last unthrottled blob with
// DownloadStream.
func (b *bench) azureFillsAndHits(ctx context.Context, p *azurePeer, rp *regproxy) ([]row, error) {
	size := b.cfg.azureSize
	var lags, rates []float64
	var warm *blob
	for i := range b.cfg.azureFills {
		bl, lag, rate, err := b.azureFill(ctx, p, rp, size, 0)
		if bl != nil {
			defer b.up.removeBlob(bl)
		}
		if err != nil {
			return nil, err
		}
		b.logf("  cold fill %d, upstream unthrottled: %.0f MB/s; committed in Azure %.3f s after the last upstream byte",
			i+1, rate, lag.Seconds())
		lags, rates, warm = append(lags, lag.Seconds()), append(rates, rate), bl
	}
	slow, slowLag, slowRate, err := b.azureFill(ctx, p, rp, size, b.cfg.stormRate)
	if slow != nil {
		defer b.up.removeBlob(slow)
	}
	if err != nil {
		return nil, err
	}
	b.logf("  cold fill, upstream at %.0f MB/s: %.0f MB/s; committed in Azure %.3f s after the last upstream byte",
		float64(b.cfg.stormRate)/1e6, slowRate, slowLag.Seconds())
	ingest, err := p.ingest(ctx, warm)
	if err != nil {
		return nil, err
	}
	b.logf("  Azurite ingest, %s uploaded with UploadStream: %.0f MB/s", sizeName(size), ingest)
	lag := median(lags)
	target := "≤ " + fmtSec(targetAzureCommit.Seconds())
	rows := []row{
		{metric: fmt.Sprintf("g. Azure cold fill, fresh %s blob, upstream unthrottled, 1 client: blob committed in Azure after the last upstream byte "+
			"(median of %d; polled every %v)", sizeName(size), len(lags), azurePollInterval),
			value: fmtSec(lag), target: target, met: verdict(lag <= targetAzureCommit.Seconds())},
		{metric: "g. Azure cold fill, upstream unthrottled: regproxy's fill rate (median), against Azurite's own ingest rate on this machine " +
			"(the same bytes uploaded by the bench with the SDK's UploadStream, 4 MiB blocks, 4 at a time)",
			value: fmtMBps(median(rates)), peer: fmtMBps(ingest) + " Azurite ingest", ratio: fmtRatio(median(rates) / ingest)},
		{metric: fmt.Sprintf("g. Azure cold fill, fresh %s blob, upstream at %.0f MB/s, 1 client: blob committed in Azure after the last upstream byte",
			sizeName(size), float64(b.cfg.stormRate)/1e6),
			value: fmtSec(slowLag.Seconds()), target: target, met: verdict(slowLag <= targetAzureCommit)},
	}
	hits, err := b.azureHits(ctx, p, rp, warm)
	rows = append(rows, hits...)
	if err != nil {
		return rows, err
	}
	fetches := warm.gets.Load() - 1
	return append(rows, row{metric: "g. Azure warm hits: upstream blob fetches during them", value: fmt.Sprint(fetches),
		target: "= 0", met: verdict(fetches == 0)}), nil
}

// azureFill pulls a fresh blob of size, served at rate (0: unthrottled),
// through rp with one client, and waits until it is committed in Azure.
// It returns the blob (for the caller to remove), how long after the
// upstream's last byte it was committed, and the client's MB/s.
func (b *bench) azureFill(ctx context.Context, p *azurePeer, rp *regproxy, size, rate int64) (*blob, time.Duration, float64, error) {
	bl, err := b.up.addBlob(size, rate)
	if err != nil {
		return nil, 0, 0, err
	}
	res, err := b.storm(ctx, viaProxy(rp), bl, 1)
	if err != nil {
		return bl, 0, 0, fmt.Errorf("cold fill: %w", err)
	}
	if res.fetches != 1 {
		return bl, 0, 0, fmt.Errorf("cold fill: %d upstream fetches, want 1", res.fetches)
	}
	lag, err := p.commitLag(ctx, bl)
	return bl, lag, float64(size) / res.total[0].Seconds() / 1e6, err
}

// ingest uploads bl's file to Azurite under a name of its own as
// regproxy's writer stages a fill (blocks of 4 MiB, 4 at a time, then the
// block list), and returns the rate in MB/s. It deletes the upload, so that
// Azurite's disk holds no more than it must.
func (p *azurePeer) ingest(ctx context.Context, bl *blob) (float64, error) {
	f, err := os.Open(bl.path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	bb := p.c.NewBlockBlobClient("bench-ingest/" + digest.Digest(bl.digest).Encoded())
	start := time.Now()
	if _, err := bb.UploadStream(ctx, f, &blockblob.UploadStreamOptions{BlockSize: 4 << 20, Concurrency: 4}); err != nil {
		return 0, fmt.Errorf("UploadStream: %w", err)
	}
	rate := float64(bl.size) / time.Since(start).Seconds() / 1e6
	if _, err := bb.Delete(ctx, nil); err != nil {
		return 0, fmt.Errorf("delete the ingest blob: %w", err)
	}
	return rate, nil
}

// azureSide is one way of reading the warm blob in scenario g.
type azureSide struct {
	name  string
	pull  func(context.Context) error
	mbps  []float64 // per timed round of the current stream count
	bytes int64     // read in all timed rounds
	// CPU time of Azurite, regproxy and the bench process (the clients)
	// in all timed rounds.
	cpu [3]time.Duration
}

// azureHits times cfg.azureRuns rounds of 1 and cfg.streams concurrent
// pulls of bl through rp and with DownloadStream, alternating which goes
// first, after one untimed round each.
func (b *bench) azureHits(ctx context.Context, p *azurePeer, rp *regproxy, bl *blob) ([]row, error) {
	c := proxiedClient(rp.addr, rp.roots)
	defer c.CloseIdleConnections()
	url := b.blobURL(bl)
	sides := []*azureSide{
		{name: "regproxy", pull: func(ctx context.Context) error { _, err := pull(ctx, c, url, bl.size, ""); return err }},
		{name: "DownloadStream", pull: func(ctx context.Context) error { return p.download(ctx, bl) }},
	}
	cpus := func() [3]time.Duration {
		return [3]time.Duration{pidCPUTime(p.pid), rp.cpuTime(), pidCPUTime(os.Getpid())}
	}
	var rows []row
	for _, streams := range []int{1, b.cfg.streams} {
		for _, s := range sides {
			s.mbps, s.bytes, s.cpu = nil, 0, [3]time.Duration{}
			if _, err := azureRound(ctx, s, bl.size, streams); err != nil {
				return rows, fmt.Errorf("%s: %w", s.name, err)
			}
		}
		for i := range b.cfg.azureRuns {
			line := fmt.Sprintf("  %d stream(s), run %d:", streams, i+1)
			for j := range sides {
				s := sides[(i+j)%len(sides)]
				before := cpus()
				v, err := azureRound(ctx, s, bl.size, streams)
				if err != nil {
					return rows, fmt.Errorf("%s: %w", s.name, err)
				}
				after := cpus()
				for k := range s.cpu {
					s.cpu[k] += after[k] - before[k]
				}
				s.mbps, s.bytes = append(s.mbps, v), s.bytes+int64(streams)*bl.size
			}
			for _, s := range sides {
				line += fmt.Sprintf(" %s %.0f MB/s", s.name, s.mbps[len(s.mbps)-1])
			}
			b.logf("%s", line)
		}
		via, direct := median(sides[0].mbps), median(sides[1].mbps)
		ratio := via / direct
		rows = append(rows, row{
			metric: fmt.Sprintf("g. Azure warm hit, %s blob in Azurite, %d stream(s): throughput (median of %d)",
				sizeName(bl.size), streams, b.cfg.azureRuns),
			value: fmtMBps(via), peer: fmtMBps(direct) + " DownloadStream", ratio: fmtRatio(ratio),
			target: fmt.Sprintf("≥ %.2f× DownloadStream", targetAzureHitRatio), met: verdict(ratio >= targetAzureHitRatio)},
			row{metric: fmt.Sprintf("g. Azure warm hit, %d stream(s): CPU time per GiB read: Azurite / regproxy / the bench's clients = total "+
				"(when the CPUs are saturated, the throughput ratio is about the inverse of this one)", streams),
				value: sides[0].cpuPerGiB(), peer: sides[1].cpuPerGiB() + " DownloadStream",
				ratio: fmtRatio(sides[0].cpuTotal() / sides[1].cpuTotal())})
	}
	return rows, nil
}

// cpuPerGiB formats the side's CPU times per GiB read, and their sum.
func (s *azureSide) cpuPerGiB() string {
	gib := float64(s.bytes) / (1 << 30)
	return fmt.Sprintf("%.2f / %.2f / %.2f = %.2f s", s.cpu[0].Seconds()/gib, s.cpu[1].Seconds()/gib, s.cpu[2].Seconds()/gib,
		s.cpuTotal())
}

// cpuTotal is the side's CPU time per GiB read, of all three processes.
func (s *azureSide) cpuTotal() float64 {
	return (s.cpu[0] + s.cpu[1] + s.cpu[2]).Seconds() / (float64(s.bytes) / (1 << 30))
}

// azureRound runs n pulls of s at once and returns the aggregate MB/s.
func azureRound(ctx context.Context, s *azureSide, size int64, n int) (float64, error) {
	start := time.Now()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = s.pull(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(n) * float64(size) / time.Since(start).Seconds() / 1e6, nil
}

// azureRSS starts a fresh regproxy on the same container and reports its
// peak RSS after cfg.rssClients clients pulled one cold cfg.azureRSSSize
// blob, and when that blob was committed.
func (b *bench) azureRSS(ctx context.Context, p *azurePeer, opts rpOptions) ([]row, error) {
	rp, err := startRegproxy(ctx, b.bins.regproxy, b.dir, b.up, b.pki.caFile, opts)
	if err != nil {
		return nil, err
	}
	defer b.stopProxy(rp)
	idle, err := rp.peakRSS()
	if err != nil {
		return nil, err
	}
	bl, err := b.up.addBlob(b.cfg.azureRSSSize, 0)
	if err != nil {
		return nil, err
	}
	defer b.up.removeBlob(bl)
	stop := b.profile(rp.proc, "g-azure-rss-storm")
	res, err := b.storm(ctx, viaProxy(rp), bl, b.cfg.rssClients)
	stop()
	if err != nil {
		return nil, err
	}
	lag, err := p.commitLag(ctx, bl)
	if err != nil {
		return nil, err
	}
	peak, err := rp.peakRSS()
	if err != nil {
		return nil, err
	}
	b.logf("  storm of %d clients: peak RSS %s; committed in Azure %.3f s after the last upstream byte",
		b.cfg.rssClients, fmtMiB(peak), lag.Seconds())
	return []row{
		{metric: fmt.Sprintf("g. Peak RSS (VmHWM) of a fresh regproxy --storage azure after %d clients pull one cold %s blob",
			b.cfg.rssClients, sizeName(bl.size)),
			value: fmtMiB(peak), peer: fmtMiB(idle) + " at start", target: "≤ " + fmtMiB(targetRSS), met: verdict(peak <= targetRSS)},
		{metric: "g. That storm: upstream blob fetches", value: fmt.Sprint(res.fetches), target: "= 1", met: verdict(res.fetches == 1)},
		{metric: "g. That storm: total time per client, median / max; blob committed in Azure after the last upstream byte",
			value: fmtSec(percentile(res.total, 50).Seconds()) + " / " + fmtSec(percentile(res.total, 100).Seconds()) +
				"; " + fmtSec(lag.Seconds())},
	}, nil
}
