package fill

import (
	"cmp"
	"slices"

	"github.com/opencontainers/go-digest"
)

// Progress is how far one fill in flight has come, as Fills reads it.
type Progress struct {
	Digest digest.Digest
	// Size is the blob's length as upstream announced it, or -1 while
	// unknown: before upstream has answered with the blob, or when it
	// announced none.
	Size int64
	// Received is the bytes received from upstream so far.
	Received int64
	// Started is set once upstream answered with the blob; until then the
	// fill is trying its callers' fetches.
	Started bool
	// Relaying is set when the spool took no more bytes (a full disk): the
	// blob reaches its readers through memory and is not cached.
	Relaying bool
	// Verified is set when every byte is in and matched the digest: the
	// fill is committing.
	Verified bool
	// Readers is how many readers follow the fill now; Joiners how many
	// were handed out to callers that joined it.
	Readers, Joiners int
}

// Fills lists the fills in flight now, the largest first (then by
// digest), for a status page. It only reads: the group's lock is held to
// copy the list, and each fill's own lock to read its figures.
func (g *Group) Fills() []Progress {
	g.mu.Lock()
	fills := make([]*Fill, 0, len(g.fills))
	for _, f := range g.fills {
		fills = append(fills, f)
	}
	g.mu.Unlock()
	out := make([]Progress, 0, len(fills))
	for _, f := range fills {
		out = append(out, f.progressOf())
	}
	slices.SortFunc(out, func(a, b Progress) int {
		return cmp.Or(cmp.Compare(b.Size, a.Size), cmp.Compare(a.Digest, b.Digest))
	})
	return out
}

// progressOf reads f's figures under its lock. size is written before
// started is set under the lock, so it is read only once started.
func (f *Fill) progressOf() Progress {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := Progress{Digest: f.digest, Size: -1, Received: f.received, Started: f.started,
		Relaying: f.spoolErr != nil, Verified: f.verified, Readers: len(f.readers), Joiners: f.joiners}
	if f.started {
		p.Size = f.size
	}
	return p
}
