package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regproxy/regproxy/metrics"
)

// serverMetrics is a server's /metrics after 8 requests the cache could
// answer, 6 of them needing no fetch of their own, 10 MiB served and 2.5
// MiB fetched upstream; and a tunnel, which is no cache request.
const serverMetrics = `# HELP regproxy_requests_total Requests answered.
# TYPE regproxy_requests_total counter
regproxy_requests_total{kind="blob",outcome="hit",registry="r.test"} 4
regproxy_requests_total{kind="blob",outcome="miss",registry="r.test"} 2
regproxy_requests_total{kind="blob",outcome="joined",registry="r.test"} 1
regproxy_requests_total{kind="tag",outcome="revalidated",registry="docker.io"} 1
regproxy_requests_total{kind="other",outcome="tunnel",registry="other"} 1
# HELP regproxy_served_bytes_total Response body bytes sent to clients.
# TYPE regproxy_served_bytes_total counter
regproxy_served_bytes_total{kind="blob",outcome="hit",registry="r.test"} 7.340032e+06
regproxy_served_bytes_total{kind="blob",outcome="miss",registry="r.test"} 2.62144e+06
regproxy_served_bytes_total{kind="blob",outcome="joined",registry="r.test"} 524288
# HELP regproxy_upstream_bytes_total Bytes fetched upstream.
# TYPE regproxy_upstream_bytes_total counter
regproxy_upstream_bytes_total{registry="r.test"} 2.62144e+06
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.7723664e+09
`

// fakeServer serves body as its /metrics, and 404 elsewhere.
func fakeServer(t *testing.T, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// closedPort is the URL of a loopback port where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// TestCacheStatsServer adds a server's figures to the stats: read from
// its /metrics, or one line saying why they could not be (exit 0 all the
// same: the cache's own figures stand).
func TestCacheStatsServer(t *testing.T) {
	fixedFreeSpace(t)
	dataDir, _ := testCache(t)
	up := fakeServer(t, serverMetrics)
	for _, tt := range []struct {
		name, golden, server string
		json                 bool
	}{
		{"human", "stats-server.txt", up, false},
		{"json", "stats-server.json", up, true},
		{"no requests yet", "stats-server-idle.txt", fakeServer(t, "process_start_time_seconds 1.7723664e+09\n"), false},
		{"unreachable", "stats-server-down.txt", closedPort(t), false},
		{"unreachable json", "stats-server-down.json", closedPort(t), true},
		{"not regproxy", "stats-server-404.txt", fakeServer(t, "") + "/nothing", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"cache", "stats", "--data-dir", dataDir, "--server", tt.server}
			if tt.json {
				args = append(args, "--json")
			}
			code, stdout, stderr := runCLI(t, args...)
			if code != 0 || stderr != "" {
				t.Fatalf("exit %d, stderr %q", code, stderr)
			}
			golden(t, tt.golden, strings.ReplaceAll(stdout, tt.server, "SERVER"))
		})
	}
	code, stdout, stderr := runCLI(t, "cache", "stats", "--data-dir", dataDir, "--server", "ftp://x")
	wantUsageError(t, "server", code, stdout, stderr)
}

// TestCacheStatsOfARunningServer pulls images through a real regproxy
// twice, then reads its figures with cache stats --server on its data
// dir: the hit ratio is that of its access log (the second pull is all
// hits), and the cache holds the blobs pulled. ls and verify run beside
// the server too, and a tag rm removes is pulled again.
func TestCacheStatsOfARunningServer(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	s := newHubSetup(t, "--data-dir", dataDir)
	blobs := cranePullAll(t, s)
	cranePullAll(t, s)

	// The access log's outcomes: a request's line is written, and its
	// metrics counted, after its response, so both may trail crane a
	// little, as may the commit of a blob's fill. Poll until /metrics
	// agrees with the log and every blob is committed.
	logged := func() (hits, misses int64) {
		for _, e := range s.d.entries(0) {
			o := strings.ToLower(e.Outcome)
			if o == "miss-joined" { // as the metrics name it
				o = "joined"
			}
			switch {
			case e.Msg != "request", strings.HasSuffix(o, "-aborted"):
			case o == "miss":
				misses++
			case slices.Contains(metrics.CacheOutcomes, o):
				hits++
			}
		}
		return hits, misses
	}
	var st statsOutput
	var hits, misses int64
	for range pollTries {
		code, stdout, stderr := runCLI(t, "cache", "stats", "--json", "--data-dir", dataDir, "--server", s.ProxyURL())
		if code != 0 {
			t.Fatalf("cache stats: exit %d, %s", code, stderr)
		}
		st = statsOutput{}
		if err := json.Unmarshal([]byte(stdout), &st); err != nil {
			t.Fatalf("%v\n%s", err, stdout)
		}
		if st.Server == nil || st.Server.ServerFigures == nil {
			t.Fatalf("no server figures: %s", stdout)
		}
		hits, misses = logged()
		if f := st.Server.ServerFigures; f.CacheRequests == hits+misses && f.Hits == hits && st.Blobs.Entries == blobs {
			break
		}
		time.Sleep(pollInterval)
	}
	f := st.Server.ServerFigures
	if f.CacheRequests != hits+misses || f.Hits != hits {
		t.Errorf("server: %d hits of %d; the access log has %d of %d", f.Hits, f.CacheRequests, hits, hits+misses)
	}
	// The first pull missed every blob, the second hit each.
	if misses < int64(blobs) || hits < int64(blobs) || f.HitRatio < 0.3 || f.HitRatio > 0.7 {
		t.Errorf("server: %d hits, %d misses, ratio %.2f; want at least %d each, about half", hits, misses, f.HitRatio, blobs)
	}
	// Upstream bytes count tokens and manifests too, and these blobs are
	// small: the second pull saved something, less than it served.
	if f.SavedBytes != f.ServedBytes-f.UpstreamBytes || f.SavedBytes <= 0 {
		t.Errorf("server: %d bytes served, %d upstream, %d saved; want some saved, the difference", f.ServedBytes, f.UpstreamBytes, f.SavedBytes)
	}
	if st.Blobs.Entries != blobs || st.Tags.Entries == 0 || st.Manifests.Entries == 0 {
		t.Errorf("cache: %d blobs, %d manifests, %d tags; want the %d blobs pulled, and manifests and tags", st.Blobs.Entries,
			st.Manifests.Entries, st.Tags.Entries, blobs)
	}

	// ls beside the server: the image's tag, by its name.
	out := lsJSON(t, "--data-dir", dataDir, "--repo", s.Image.Repo)
	name := s.up.Host + "/" + s.Image.Repo + ":" + s.Image.Tag
	if len(out.Tags) != 1 || out.Tags[0].Name != name || out.Tags[0].Digest.String() != s.Image.Digest || out.Tags[0].Size == 0 {
		t.Errorf("ls --repo %s: %+v; want %s at %s", s.Image.Repo, out.Tags, name, s.Image.Digest)
	}
	if len(out.Blobs) != 4 {
		t.Errorf("ls --repo %s: %d blobs, want the image's 4 (config and 3 layers)", s.Image.Repo, len(out.Blobs))
	}
	if code, stdout, _ := runCLI(t, "cache", "verify", "--data-dir", dataDir); code != 0 {
		t.Errorf("verify beside the server: exit %d\n%s", code, stdout)
	}

	// rm the tag beside the server: its records go, and a pull works.
	if code, stdout, stderr := runCLI(t, "cache", "rm", "--data-dir", dataDir, name); code != 0 || !strings.Contains(stdout, "removed tag "+name) {
		t.Fatalf("rm %s: exit %d, %s%s", name, code, stdout, stderr)
	}
	if out := lsJSON(t, "--data-dir", dataDir, "--repo", s.Image.Repo); len(out.Tags) != 0 {
		t.Errorf("after rm, ls still lists %+v", out.Tags)
	}
	cranePullAll(t, s)
}
