package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/internal/bytesize"
)

// cache rm removes what its arguments name: a digest, the blob or manifest
// of that digest; REGISTRY/REPO:TAG, that tag's records (one per Accept
// header its clients sent); REGISTRY/REPO, every tag record of the
// repository. Blobs and manifests stay when tags go: other repositories
// may share them, and cache gc evicts what nothing uses.

func cacheRmCommand() *cli.Command {
	return &cli.Command{
		Name:         "rm",
		Usage:        "remove a blob or manifest (DIGEST), a tag's records (REGISTRY/REPO:TAG) or a repository's (REGISTRY/REPO)",
		ArgsUsage:    "DIGEST|REGISTRY/REPO[:TAG]...",
		Flags:        cacheFlags(),
		OnUsageError: usageError,
		Action:       cacheRm,
	}
}

// rmTarget is an argument of rm.
type rmTarget struct {
	arg    string
	digest digest.Digest // a blob or manifest; else a name:
	repo   string        // as proxy.TagName spells it: docker.io/library/alpine
	tag    string        // "" for every tag of repo
}

// parseRmTarget reads an argument of rm. A digest is ALGORITHM:HEX; a name
// is read as docker reads image names, so alpine is
// docker.io/library/alpine. A malformed one is a usage error.
func parseRmTarget(arg string) (rmTarget, error) {
	if strings.HasPrefix(arg, "-") {
		return rmTarget{}, fmt.Errorf("%q: flags go before the arguments", arg)
	}
	if alg, _, ok := strings.Cut(arg, ":"); ok && !strings.Contains(arg, "/") && digest.Algorithm(alg).Available() {
		d, err := digest.Parse(arg)
		if err != nil {
			return rmTarget{}, fmt.Errorf("%q: not a digest: %v", arg, err)
		}
		return rmTarget{arg: arg, digest: d}, nil
	}
	named, err := reference.ParseNormalizedNamed(arg)
	if err != nil {
		return rmTarget{}, fmt.Errorf("%q: want a digest (sha256:…) or REGISTRY/REPOSITORY[:TAG]: %v", arg, err)
	}
	if _, ok := named.(reference.Digested); ok {
		return rmTarget{}, fmt.Errorf("%q: give the manifest's digest alone, or the repository and tag", arg)
	}
	domain := strings.TrimSuffix(reference.Domain(named), ":443")
	t := rmTarget{arg: arg, repo: domain + "/" + reference.Path(named)}
	if tagged, ok := named.(reference.Tagged); ok {
		t.tag = tagged.Tag()
	}
	return t, nil
}

func (t rmTarget) name() string {
	if t.tag != "" {
		return t.repo + ":" + t.tag
	}
	return t.repo
}

// matches reports whether rec is one of the records t names.
func (t rmTarget) matches(rec *cachedTag) bool {
	if t.digest != "" || (t.tag != "" && rec.Tag != t.tag) {
		return false
	}
	return rec.Repo() == t.repo || rec.RepoAlias() == t.repo
}

// rmOutput is what cache rm prints.
type rmOutput struct {
	Removed  []rmResult `json:"removed"`
	NotFound []string   `json:"notFound"`
}

// rmResult is what one argument removed.
type rmResult struct {
	Arg string `json:"arg"`
	// Kind is blob, manifest, tag or repository.
	Kind string `json:"kind"`
	// Name is the digest, or the tag or repository as ls spells it.
	Name    string `json:"name"`
	Entries int    `json:"entries"`
	Bytes   int64  `json:"bytes"`
	// Tags are, for a repository, the tags whose records went.
	Tags []string `json:"tags,omitempty"`
}

func cacheRm(c *cli.Context) error {
	if !c.Args().Present() {
		return cli.Exit("cache rm: give what to remove: DIGEST, REGISTRY/REPO:TAG or REGISTRY/REPO", 2)
	}
	var targets []rmTarget
	names := false
	for _, arg := range c.Args().Slice() {
		t, err := parseRmTarget(arg)
		if err != nil {
			return cli.Exit("cache rm: "+err.Error(), 2)
		}
		targets = append(targets, t)
		names = names || t.digest == ""
	}
	cs, err := openCache(c)
	if err != nil {
		return err
	}
	defer cs.close()
	var scan *cacheScan
	if names {
		if scan, err = scanCache(c.Context, cs.backend, false); err != nil {
			return cli.Exit(err.Error(), 1)
		}
	}
	out := rmOutput{Removed: []rmResult{}, NotFound: []string{}}
	gone := map[string]bool{} // tag records removed, for overlapping arguments
	for _, t := range targets {
		var res rmResult
		var err error
		if t.digest != "" {
			res, err = rmDigest(c.Context, cs, t)
		} else {
			res, err = rmTags(c.Context, cs, scan, t, gone)
		}
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		if res.Entries == 0 {
			out.NotFound = append(out.NotFound, t.arg)
			continue
		}
		out.Removed = append(out.Removed, res)
	}
	if c.Bool("json") {
		err = printJSON(c.App.Writer, out)
	} else {
		err = printRm(c.App.Writer, out)
	}
	if err != nil {
		return err
	}
	if len(out.NotFound) > 0 {
		return cli.Exit("cache rm: not in the cache: "+strings.Join(out.NotFound, ", "), 1)
	}
	return nil
}

// rmDigest removes the blob and the manifest of t's digest, with a
// manifest's .meta record, from the store and its local tier.
func rmDigest(ctx context.Context, cs *cacheStore, t rmTarget) (rmResult, error) {
	res := rmResult{Arg: t.arg, Name: t.digest.String()}
	var kinds []string
	for _, k := range []struct{ kind, key string }{
		{"blob", cachestore.BlobKey(t.digest)},
		{"manifest", cachestore.ManifestKey(t.digest)},
		{"", cachestore.ManifestMetaKey(t.digest)}, // goes with the manifest
	} {
		stores := []cacheBackend{cs.backend}
		if cs.local != nil {
			stores = append(stores, cs.local)
		}
		found := false
		for _, s := range stores {
			n, ok, err := removeEntry(ctx, s, k.key)
			if err != nil {
				return res, err
			}
			if ok && !found { // an entry, in one tier or both
				found = true
				res.Entries++
				res.Bytes += n
			}
		}
		if found && k.kind != "" {
			kinds = append(kinds, k.kind)
		}
	}
	res.Kind = strings.Join(kinds, " and ")
	if res.Kind == "" {
		res.Kind = "manifest" // only the .meta record of one was left
	}
	return res, nil
}

// removeEntry removes key's entry from s, reporting its size and whether
// there was one. It deletes with DeleteIf, which on disk leaves the
// directories in place for a server that may be committing beside it.
func removeEntry(ctx context.Context, s cacheBackend, key string) (int64, bool, error) {
	e, err := s.Stat(ctx, key)
	if errors.Is(err, cachestore.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	ok, err := s.DeleteIf(ctx, key, func() bool { return true })
	if errors.Is(err, cachestore.ErrNotFound) {
		return 0, false, nil // removed meanwhile, by someone else
	}
	return e.Size, ok, err
}

// rmTags removes the tag records t names.
func rmTags(ctx context.Context, cs *cacheStore, scan *cacheScan, t rmTarget, gone map[string]bool) (rmResult, error) {
	res := rmResult{Arg: t.arg, Kind: "tag", Name: t.name()}
	if t.tag == "" {
		res.Kind = "repository"
	}
	for _, rec := range scan.tags {
		if !t.matches(rec) || gone[rec.entry.Key] {
			continue
		}
		n, ok, err := removeEntry(ctx, cs.backend, rec.entry.Key)
		if err != nil {
			return res, err
		}
		if !ok {
			continue
		}
		gone[rec.entry.Key] = true
		res.Entries++
		res.Bytes += n
		if t.tag == "" && !slices.Contains(res.Tags, rec.Tag) {
			res.Tags = append(res.Tags, rec.Tag)
		}
	}
	slices.Sort(res.Tags)
	return res, nil
}

func printRm(w io.Writer, out rmOutput) error {
	tags := false
	for _, r := range out.Removed {
		switch r.Kind {
		case "tag":
			tags = true
			fmt.Fprintf(w, "removed tag %s (%s)\n", r.Name, plural(r.Entries, "record"))
		case "repository":
			tags = true
			fmt.Fprintf(w, "removed %s of %s (%s; %s); its blobs and manifests stay, since other repositories may share them (cache gc evicts what nothing uses)\n",
				plural(len(r.Tags), "tag"), r.Name, strings.Join(r.Tags, ", "), plural(r.Entries, "record"))
		default:
			fmt.Fprintf(w, "removed %s %s (%s)\n", r.Kind, r.Name, bytesize.Format(r.Bytes))
		}
	}
	if tags {
		fmt.Fprintln(w, "note: a server running on this cache keeps recently used tags in memory, and may serve a removed one until its TTL ends")
	}
	return nil
}
