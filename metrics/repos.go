package metrics

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
)

// The status page's "top repositories" is the one place where regproxy
// counts by repository. It is not a metric: Prometheus labels stay
// bounded and free of repository names (see the package doc), and the
// tally is kept only once TrackRepositories is called (serve's
// --status-repos), since whoever reaches the proxy port can read the page.
// Until then no repository name is held at all.

// DefaultTrackedRepos is how many repositories serve tracks with
// --status-repos.
const DefaultTrackedRepos = 1000

// RepoStatus is what the tally knows of one repository.
type RepoStatus struct {
	Registry   string // the registry label, as in Request
	Repository string
	Requests   float64
	// ServedBytes is the body bytes sent for the repository's requests;
	// CachedBytes the part of them served from the cache (outcomes hit,
	// joined, stale and revalidated).
	ServedBytes, CachedBytes float64
}

// repoTally is a bounded tally of bytes served by repository. When it is
// full, a repository seen for the first time takes the place of the one
// with the fewest bytes served: the heaviest repositories stay, and their
// figures are exact from the moment they entered.
type repoTally struct {
	on    atomic.Bool // set by TrackRepositories; off, requests skip the lock
	mu    sync.Mutex  // protects the fields below
	max   int
	repos map[repoID]*RepoStatus
}

type repoID struct{ registry, repo string }

// TrackRepositories starts the per-repository tally that the status page
// lists, for at most n repositories (at least 1). The page's figures of
// a repository count from this call on.
func (m *Metrics) TrackRepositories(n int) {
	t := &m.repoTally
	t.mu.Lock()
	defer t.mu.Unlock()
	t.max = max(n, 1)
	if t.repos == nil {
		t.repos = make(map[repoID]*RepoStatus)
	}
	t.on.Store(true)
}

// TracksRepositories reports whether TrackRepositories was called, so
// that a caller can skip working out a repository's name when it is not.
func (m *Metrics) TracksRepositories() bool { return m.repoTally.on.Load() }

// ServedRepository counts one request for repo of registry, answered with
// n body bytes and the given outcome (see Request), in the tally of
// TrackRepositories; before that call it does nothing. Call it alongside
// Served, with the same registry, outcome and n.
func (m *Metrics) ServedRepository(registry, repo, outcome string, n int64) {
	t := &m.repoTally
	if !t.on.Load() || repo == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	id := repoID{registry, repo}
	r := t.repos[id]
	if r == nil {
		r = t.addLocked(id)
	}
	r.Requests++
	if n > 0 {
		r.ServedBytes += float64(n)
		if outcome != "miss" && slices.Contains(CacheOutcomes, outcome) {
			r.CachedBytes += float64(n)
		}
	}
}

// addLocked makes room for id and adds it. mu must be held.
func (t *repoTally) addLocked(id repoID) *RepoStatus {
	for len(t.repos) >= t.max {
		var least *RepoStatus
		for _, r := range t.repos {
			if least == nil || r.ServedBytes < least.ServedBytes {
				least = r
			}
		}
		delete(t.repos, repoID{least.Registry, least.Repository})
	}
	r := &RepoStatus{Registry: id.registry, Repository: id.repo}
	t.repos[id] = r
	return r
}

// Repositories returns the n repositories with the most bytes served (all
// of them for n <= 0), the most first, and whether tracking is on.
func (m *Metrics) Repositories(n int) ([]RepoStatus, bool) {
	t := &m.repoTally
	t.mu.Lock()
	out := make([]RepoStatus, 0, len(t.repos))
	for _, r := range t.repos {
		out = append(out, *r)
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b RepoStatus) int {
		return cmp.Or(cmp.Compare(b.ServedBytes, a.ServedBytes), cmp.Compare(b.Requests, a.Requests),
			cmp.Compare(a.Registry, b.Registry), cmp.Compare(a.Repository, b.Repository))
	})
	if n > 0 && len(out) > n {
		out = out[:n]
	}
	return out, t.on.Load()
}
