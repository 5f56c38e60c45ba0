package proxy

import (
	"slices"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
)

// headTags remembers, for a little while, which digest upstream announced
// for a tag that a client asked about with a HEAD while the manifest was
// not cached. dockerd and containerd pull that way: a HEAD of the tag, then
// a GET by digest. When that GET caches the manifest, the tag record the
// HEAD established is written, with the time of the HEAD, so that the next
// pull's HEAD is a hit and not one more HEAD upstream.
type headTags struct {
	mu sync.Mutex // makes the read-modify-write of a digest's list atomic
	// pending maps hash(registry, repository, digest) to the HEADs that
	// announced it. An LRU, since tags and digests are the clients' choice.
	pending *lru.Cache[[16]byte, []headTag]
}

// headTag is one HEAD's answer: a tag query named a digest.
type headTag struct {
	query     tagQuery
	mediaType string    // the Content-Type upstream answered with, if a manifest type
	at        time.Time // when upstream answered
}

const (
	// headTagTTL is how long a HEAD's answer waits for its GET by digest,
	// which a client sends at once.
	headTagTTL = time.Minute
	// maxHeadDigests bounds the digests remembered; maxHeadsPerDigest the
	// tag queries (tags, Accept headers) remembered for one of them.
	maxHeadDigests    = 4 << 10
	maxHeadsPerDigest = 8
)

func newHeadTags() *headTags {
	pending, _ := lru.New[[16]byte, []headTag](maxHeadDigests)
	return &headTags{pending: pending}
}

func headKey(registry, repo string, d digest.Digest) [16]byte {
	return hash16(registry, repo, d.String())
}

// remember records that upstream answered q's HEAD at with the announced
// digest (a Docker-Content-Digest value; nothing is recorded unless it is
// a valid sha256 digest).
func (h *headTags) remember(q tagQuery, announced, mediaType string, at time.Time) {
	d, err := parseDigest(announced)
	if err != nil {
		return
	}
	k := headKey(q.registry, q.repo, d)
	h.mu.Lock()
	defer h.mu.Unlock()
	list, _ := h.pending.Peek(k)
	list = slices.DeleteFunc(slices.Clone(list), func(x headTag) bool { return x.query == q })
	list = append(list, headTag{query: q, mediaType: mediaType, at: at})
	if len(list) > maxHeadsPerDigest {
		list = list[len(list)-maxHeadsPerDigest:]
	}
	h.pending.Add(k, list)
}

// take returns, and forgets, the HEAD answers that named d in rk no longer
// than headTagTTL before now.
func (h *headTags) take(rk repoKey, d digest.Digest, now time.Time) []headTag {
	k := headKey(rk.registry, rk.repo, d)
	h.mu.Lock()
	list, ok := h.pending.Peek(k)
	if ok {
		h.pending.Remove(k)
	}
	h.mu.Unlock()
	return slices.DeleteFunc(list, func(x headTag) bool { return now.Sub(x.at) >= headTagTTL })
}
