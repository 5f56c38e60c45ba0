package testupstream

import (
	"net/http"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// WithRepoScopedBlobs makes each repository hold only its own blobs and
// manifests, as distribution/distribution and Docker Hub do.
// go-containerregistry's registry keeps one store keyed by digest alone,
// where every repository sees every blob and a manifest PUT is never
// checked. With this option the Upstream keeps a table of what each
// repository holds:
//
//   - a blob, once an upload into the repository ends with 201 (the PUT
//     that closes a POST, PATCH..., PUT upload, with or without a final
//     chunk, or a monolithic POST ?digest=), or once a mount into it
//     (POST ?mount=D&from=OTHER) succeeds;
//   - a manifest and its tag, once a manifest PUT to the repository ends
//     with 201.
//
// It then answers like distribution:
//
//   - GET or HEAD of a blob or manifest the repository does not hold: 404
//     BLOB_UNKNOWN or MANIFEST_UNKNOWN, also for a tag whose manifest was
//     deleted;
//   - a mount answers 201 only if OTHER holds D; otherwise it starts an
//     ordinary upload (202), so the client sends the bytes;
//   - a manifest PUT naming a config, layer or child manifest the
//     repository does not hold: 400 MANIFEST_BLOB_UNKNOWN;
//   - DELETE of a manifest by digest (202) also drops the tags that point
//     to it; DELETE of a blob unlinks it from that repository only.
//
// In hub mode (WithHub) the token check comes first, and a blob GET for a
// blob the repository lacks gets the 404 instead of a redirect to the CDN.
// Push and PushIndex go through the same server, so they fill the table.
// The option is off by default.
func WithRepoScopedBlobs() Option {
	return func(c *config) { c.repoScoped = true }
}

// Holds reports whether repository repo holds ref: a digest ("sha256:…")
// of a blob or manifest, or a tag. It panics unless the Upstream was
// started WithRepoScopedBlobs, since without it every repository sees
// every blob and the answer would mislead.
func (u *Upstream) Holds(repo, ref string) bool {
	if u.repos == nil {
		panic("testupstream: Holds needs an Upstream started WithRepoScopedBlobs")
	}
	return u.repos.hasBlobRef(repo, ref) || u.repos.hasManifest(repo, ref)
}

// repos is the registry of WithRepoScopedBlobs: the table of what each
// repository holds, in front of the registry that stores the bytes. Its
// lock is never held while the registry runs; the registry may hold its
// own lock while it calls into the table (see onStatus), never the other
// way round.
type repos struct {
	next http.Handler // the registry, which keys blobs by digest alone

	mu   sync.Mutex          // guards held
	held map[string]*holding // repository name → what it holds
}

// holding is what one repository holds.
type holding struct {
	blobs     map[v1.Hash]bool
	manifests map[v1.Hash]bool
	tags      map[string]v1.Hash // tag → manifest digest
}

func newRepos(next http.Handler) *repos {
	return &repos{next: next, held: map[string]*holding{}}
}

// peek returns name's holding for reading, without adding a repository
// that was never written to: its nil maps read as empty. The caller holds
// mu.
func (s *repos) peek(name string) holding {
	if h, ok := s.held[name]; ok {
		return *h
	}
	return holding{}
}

// repo returns name's holding for writing, made on first use. The caller
// holds mu.
func (s *repos) repo(name string) *holding {
	h, ok := s.held[name]
	if !ok {
		h = &holding{blobs: map[v1.Hash]bool{}, manifests: map[v1.Hash]bool{}, tags: map[string]v1.Hash{}}
		s.held[name] = h
	}
	return h
}

func (s *repos) addBlob(name string, d v1.Hash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.repo(name).blobs[d] = true
}

func (s *repos) hasBlob(name string, d v1.Hash) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peek(name).blobs[d]
}

// hasBlobRef is hasBlob for a digest in text; a tag is never a blob.
func (s *repos) hasBlobRef(name, ref string) bool {
	d, err := v1.NewHash(ref)
	return err == nil && s.hasBlob(name, d)
}

// dropBlob unlinks d from name and reports whether name held it.
func (s *repos) dropBlob(name string, d v1.Hash) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.repo(name)
	had := h.blobs[d]
	delete(h.blobs, d)
	return had
}

// link adds d to name if from holds it, in one step so that a concurrent
// delete in from cannot slip between the check and the add.
func (s *repos) link(from, name string, d v1.Hash) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.peek(from).blobs[d] {
		return false
	}
	s.repo(name).blobs[d] = true
	return true
}

// addManifest records manifest d in name, and ref as a tag of d unless ref
// is the digest itself.
func (s *repos) addManifest(name string, d v1.Hash, ref string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.repo(name)
	h.manifests[d] = true
	if _, err := v1.NewHash(ref); err != nil {
		h.tags[ref] = d
	}
}

// hasManifest reports whether name holds ref, a manifest digest or a tag.
func (s *repos) hasManifest(name, ref string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.peek(name)
	if d, err := v1.NewHash(ref); err == nil {
		return h.manifests[d]
	}
	_, ok := h.tags[ref]
	return ok
}

// dropManifest forgets ref in name. A digest takes every tag that points
// to it along, as distribution untags a manifest deleted by digest; a tag
// goes alone and leaves its manifest.
func (s *repos) dropManifest(name, ref string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.repo(name)
	d, err := v1.NewHash(ref)
	if err != nil {
		delete(h.tags, ref)
		return
	}
	delete(h.manifests, d)
	for tag, td := range h.tags {
		if td == d {
			delete(h.tags, tag)
		}
	}
}

// lacking returns the first of blobs and manifests that name does not hold,
// checked under one lock so the answer describes one moment.
func (s *repos) lacking(name string, blobs, manifests []v1.Hash) (v1.Hash, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.peek(name)
	for _, d := range blobs {
		if !h.blobs[d] {
			return d, true
		}
	}
	for _, d := range manifests {
		if !h.manifests[d] {
			return d, true
		}
	}
	return v1.Hash{}, false
}
