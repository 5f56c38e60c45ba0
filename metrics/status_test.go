package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/regproxy/regproxy/metrics"
)

// TestStatusMatchesSeries: Status adds up, by registry and in total, the
// series /metrics serves.
func TestStatusMatchesSeries(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	exercise(t, m)
	m.Request("registry.test", "blob", "miss")
	m.Served("registry.test", "blob", "miss", 500)
	m.Request("quay.test", "tag", "joined")
	m.Served("quay.test", "tag", "joined", 7000)
	m.Request(metrics.Other, "other", "tunnel")
	upstream(t, m, roundTripper{status: 429}, "quay.test")
	s, err := m.Status()
	if err != nil {
		t.Fatal(err)
	}
	if s.CacheRequests != 3 || s.CacheHits != 2 || s.Requests != 4 {
		t.Errorf("requests %v, cache requests %v, hits %v; want 4, 3, 2", s.Requests, s.CacheRequests, s.CacheHits)
	}
	if s.UpstreamErrors != 2 || s.RateLimited != 2 {
		t.Errorf("upstream errors %v, 429s %v; want 2 and 2", s.UpstreamErrors, s.RateLimited)
	}
	if s.Cache == nil || s.Cache.MaxBytes != 1<<20 {
		t.Errorf("cache %+v; want the hook's figures", s.Cache)
	}
	want := []metrics.RegistryStatus{
		{Registry: "quay.test", CacheRequests: 1, CacheHits: 1, ServedBytes: 7000, RateLimited: 1},
		{Registry: "registry.test", CacheRequests: 2, CacheHits: 1, ServedBytes: 1500, UpstreamBytes: 5,
			UpstreamErrors: 2, RateLimited: 1},
	}
	if fmt.Sprint(s.Registries) != fmt.Sprint(want) {
		t.Errorf("registries\n%+v\nwant\n%+v", s.Registries, want)
	}
	if got := s.Registries[1].HitRatio(); got != 0.5 {
		t.Errorf("registry.test hit ratio %v; want 0.5", got)
	}
}

// TestRepositoriesOffByDefault: without TrackRepositories no repository
// is kept.
func TestRepositoriesOffByDefault(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	m.ServedRepository("registry.test", "team/app", "hit", 100)
	if got, on := m.Repositories(0); on || len(got) != 0 {
		t.Errorf("Repositories() = %v, %v without TrackRepositories; want none, off", got, on)
	}
}

// TestRepositoriesBounded: the tally holds at most its size; a newcomer
// takes the place of the repository with the fewest bytes, so the
// heaviest stay, with exact figures.
func TestRepositoriesBounded(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	m.TrackRepositories(3)
	m.ServedRepository("r", "big", "miss", 1000)
	m.ServedRepository("r", "big", "hit", 1000)
	m.ServedRepository("r", "mid", "joined", 500)
	m.ServedRepository("r", "small", "pass", 10)
	for i := range 50 {
		m.ServedRepository("r", fmt.Sprint("noise", i), "pass", 1)
	}
	m.ServedRepository("r", "", "hit", 99) // no name: not tallied
	got, on := m.Repositories(0)
	if !on || len(got) != 3 {
		t.Fatalf("Repositories() = %+v, %v; want 3, on", got, on)
	}
	want := []metrics.RepoStatus{
		{Registry: "r", Repository: "big", Requests: 2, ServedBytes: 2000, CachedBytes: 1000},
		{Registry: "r", Repository: "mid", Requests: 1, ServedBytes: 500, CachedBytes: 500},
	}
	for i, w := range want {
		if got[i] != w {
			t.Errorf("Repositories()[%d] = %+v; want %+v", i, got[i], w)
		}
	}
	if !strings.HasPrefix(got[2].Repository, "noise") {
		t.Errorf("third place %q; want the latest newcomer", got[2].Repository)
	}
	if top, _ := m.Repositories(1); len(top) != 1 || top[0].Repository != "big" {
		t.Errorf("Repositories(1) = %+v; want big alone", top)
	}
}

// limited answers 429 with a Retry-After.
type limited struct{ retryAfter string }

func (l limited) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {l.retryAfter}},
		Body: http.NoBody, Request: req}, nil
}

// TestRecentUpstream: every 429, 5xx and transport failure that the
// counters count is kept, newest first, up to RecentUpstreamMax, without
// the request's path or the error's text.
func TestRecentUpstream(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	send := func(rt http.RoundTripper, url string) {
		tr := m.Transport(rt, func(*http.Request) string { return "registry.test" })
		req, _ := http.NewRequest("GET", url, nil)
		if resp, err := tr.RoundTrip(req); err == nil {
			resp.Body.Close()
		}
	}
	send(roundTripper{status: 200}, "https://registry.test/v2/")
	send(limited{retryAfter: "30"}, "https://registry.test/v2/secret/repo/manifests/v1")
	send(roundTripper{status: 502}, "https://cdn.test/v2/secret/repo/blobs/sha256:abc")
	send(roundTripper{err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}, "https://registry.test/v2/")
	send(roundTripper{err: errors.New(`Get "https://registry.test/v2/secret/repo": tls: bad record`)}, "https://auth.test/token?scope=repository:secret/repo:pull&service=x")
	got := m.RecentUpstream()
	want := []metrics.UpstreamEvent{
		{Registry: "registry.test", Host: "auth.test", Kind: "token", Reason: "transport", Detail: "TLS handshake failed"},
		{Registry: "registry.test", Host: "registry.test", Kind: "ping", Reason: "transport", Detail: "connection refused"},
		{Registry: "registry.test", Host: "cdn.test", Kind: "blob", Reason: "5xx", Status: 502, Detail: "Bad Gateway"},
		{Registry: "registry.test", Host: "registry.test", Kind: "manifest", Reason: "429", Status: 429, Detail: "retry after 30s"},
	}
	if len(got) != len(want) {
		t.Fatalf("RecentUpstream() = %+v; want %d events", got, len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Time.IsZero() {
			t.Errorf("event %d has no time", i)
		}
		g.Time = w.Time
		if g != w {
			t.Errorf("event %d = %+v; want %+v", i, g, w)
		}
		if strings.Contains(fmt.Sprint(got[i]), "secret") {
			t.Errorf("event %d names the repository: %+v", i, got[i])
		}
	}
	for range metrics.RecentUpstreamMax + 5 {
		send(roundTripper{status: 503}, "https://registry.test/v2/")
	}
	if got := m.RecentUpstream(); len(got) != metrics.RecentUpstreamMax || got[0].Status != 503 {
		t.Errorf("after many more: %d events, newest %+v; want %d, a 503", len(got), got[0], metrics.RecentUpstreamMax)
	}
}

// TestRecentUpstreamAbandoned: a request its sender cancelled is no
// upstream failure, in the ring as in the counter; a stall is.
func TestRecentUpstreamAbandoned(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	tr := m.Transport(roundTripper{err: context.Canceled}, func(*http.Request) string { return "registry.test" })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://registry.test/v2/", nil)
	tr.RoundTrip(req)
	ctx, stall := context.WithCancelCause(context.Background())
	stall(errors.New("upstream sent nothing for the stall timeout"))
	req, _ = http.NewRequestWithContext(ctx, "GET", "https://registry.test/v2/r/blobs/sha256:abc", nil)
	tr.RoundTrip(req)
	got := m.RecentUpstream()
	if len(got) != 1 || got[0].Detail != "aborted: upstream sent nothing for the stall timeout" {
		t.Errorf("RecentUpstream() = %+v; want the stall alone", got)
	}
}

// TestRecentUpstreamRetryAfter: a 429's Retry-After is shown when it is
// one (seconds, or an HTTP-date), and said to be absent or unreadable
// otherwise.
func TestRecentUpstreamRetryAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ header, want string }{
		{"120", "retry after 120s"},
		{"Wed, 21 Oct 2026 07:28:00 GMT", "retry after Wed, 21 Oct 2026 07:28:00 GMT"},
		{"", "no Retry-After"},
		{"soon <script>", "Retry-After unreadable"},
		{strings.Repeat("9", 41), "Retry-After unreadable"},
	} {
		m := metrics.New()
		tr := m.Transport(limited{retryAfter: tc.header}, func(*http.Request) string { return "registry.test" })
		req, _ := http.NewRequest("GET", "https://registry.test/v2/", nil)
		if resp, err := tr.RoundTrip(req); err == nil {
			resp.Body.Close()
		}
		if got := m.RecentUpstream(); len(got) != 1 || got[0].Detail != tc.want {
			t.Errorf("Retry-After %q: %+v; want detail %q", tc.header, got, tc.want)
		}
	}
}
