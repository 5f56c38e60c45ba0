package main

import (
	"cmp"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/internal/bytesize"
)

// cache ls lists the tags and blobs of the cache. Blobs belong to the
// repositories whose tags lead to them: tag record → manifest (→ the
// manifests of an index) → config and layers. It costs one walk of the
// store, a read of each tag record and of each manifest, and no read of
// any blob.

func cacheLsCommand() *cli.Command {
	return &cli.Command{
		Name:      "ls",
		Usage:     "list cached tags (digest, size, expiry) and blobs (size, last use, repositories)",
		ArgsUsage: " ",
		Flags: cacheFlags(
			&cli.StringFlag{Name: "registry", Usage: "only tags and blobs of registries named so: a name (docker.io, quay.io, host:port) or a glob (*.example.com)"},
			&cli.StringFlag{Name: "repo", Usage: "only tags and blobs of repositories named so: a name, which also matches the repositories under it (library matches library/alpine), or a glob (library/*, */app)"},
			&cli.StringFlag{Name: "sort", Value: "name", Usage: "name, size (largest first) or used (least recently used first, as eviction goes)"},
			manifestTTLFlag("serve's --manifest-ttl: the expiry of tag records written before TTL rules (newer ones hold their own)"),
		),
		OnUsageError: usageError,
		Action:       cacheLs,
	}
}

// manifestTTLFlag is serve's --manifest-ttl, for the cache commands.
func manifestTTLFlag(usage string) cli.Flag {
	return &cli.StringFlag{Name: "manifest-ttl", Value: "1h", EnvVars: env("manifest-ttl", "MANIFEST_CACHE_DEFAULT_TIME"), Usage: usage}
}

// lsOutput is what cache ls prints.
type lsOutput struct {
	Tags  []lsTag  `json:"tags"`
	Blobs []lsBlob `json:"blobs"`
	// BlobBytes is the size of the blobs listed.
	BlobBytes int64 `json:"blobBytes"`
}

// lsTag is a tag, with the records that name one manifest for it (one per
// Accept header its clients sent).
type lsTag struct {
	Name       string        `json:"name"`
	Registry   string        `json:"registry"`
	Repository string        `json:"repository"`
	Tag        string        `json:"tag"`
	Digest     digest.Digest `json:"digest"`
	MediaType  string        `json:"mediaType,omitempty"`
	Records    int           `json:"records"`
	Validated  time.Time     `json:"validated"`
	Expires    time.Time     `json:"expires"`
	Expired    bool          `json:"expired"`
	// Size is the bytes of the manifests and blobs it leads to that are
	// cached; LastUse the latest use of any of them (null if none is).
	Size    int64      `json:"size"`
	LastUse *time.Time `json:"lastUse"`

	repo, alias string // repository names, for filters
	hub         bool
}

// lsBlob is a blob and the repositories whose tags lead to it.
type lsBlob struct {
	Digest       digest.Digest `json:"digest"`
	Size         int64         `json:"size"`
	LastUse      time.Time     `json:"lastUse"`
	Repositories []string      `json:"repositories"`
	// Manifests counts the cached manifests that name it, tagged or not:
	// 0 for a blob no cached manifest names.
	Manifests int `json:"manifests"`

	tags []*lsTag
}

// namePattern is a --registry or --repo value: a name, or a glob.
type namePattern struct {
	s    string
	glob bool
}

// parseNamePattern reads a filter flag; "" is none (nil).
func parseNamePattern(flag, s string) (*namePattern, error) {
	if s == "" {
		return nil, nil
	}
	p := &namePattern{s: s, glob: strings.ContainsAny(s, `*?[\`)}
	if _, err := path.Match(s, ""); err != nil {
		return nil, badFlag(flag, fmt.Errorf("%q: %v", s, err))
	}
	return p, nil
}

// match reports whether name is p's name, under it (p/…), or matches p's
// glob.
func (p *namePattern) match(name string) bool {
	if p.glob {
		ok, _ := path.Match(p.s, name)
		return ok
	}
	return name == p.s || strings.HasPrefix(name, p.s+"/")
}

// lsFilter is ls's --registry and --repo.
type lsFilter struct{ registry, repo *namePattern }

func (f lsFilter) none() bool { return f.registry == nil && f.repo == nil }

// tag reports whether t passes the filter. Its registry is matched as its
// name spells it (docker.io) and, for Docker Hub, as registry-1.docker.io;
// a Docker Hub repository also as people shorten it (alpine for
// library/alpine).
func (f lsFilter) tag(t *lsTag) bool {
	if f.registry != nil {
		reg, _, _ := strings.Cut(t.repo, "/")
		aliasReg, _, _ := strings.Cut(t.alias, "/")
		if !f.registry.match(reg) && (t.alias == "" || !f.registry.match(aliasReg)) {
			return false
		}
	}
	if f.repo != nil {
		short, official := strings.CutPrefix(t.Repository, "library/")
		if !f.repo.match(t.Repository) && !(t.hub && official && f.repo.match(short)) {
			return false
		}
	}
	return true
}

func cacheLs(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	var f lsFilter
	var err error
	if f.registry, err = parseNamePattern("registry", c.String("registry")); err != nil {
		return err
	}
	if f.repo, err = parseNamePattern("repo", c.String("repo")); err != nil {
		return err
	}
	order := c.String("sort")
	if order != "name" && order != "size" && order != "used" {
		return badFlag("sort", fmt.Errorf("%q: want name, size or used", order))
	}
	ttl, err := parseDuration(c.String("manifest-ttl"))
	if err != nil {
		return badFlag("manifest-ttl", err)
	}
	cs, err := openCache(c)
	if err != nil {
		return err
	}
	defer cs.close()
	scan, err := scanCache(c.Context, cs.backend, true)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	if scan.unreadable > 0 {
		fmt.Fprintf(c.App.ErrWriter, "%s could not be read (cache gc evicts them)\n", plural(scan.unreadable, "tag record"))
	}
	out := listing(scan, f, ttl, cacheNow())
	sortListing(&out, order)
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	return printListing(c.App.Writer, out)
}

// listing builds what ls prints from a scan.
func listing(scan *cacheScan, f lsFilter, ttl time.Duration, now time.Time) lsOutput {
	type group struct {
		name string
		d    digest.Digest
	}
	groups := map[group]*lsTag{}
	var tags []*lsTag
	for _, rec := range scan.tags {
		g := group{rec.Name(), rec.Digest}
		t := groups[g]
		if t == nil {
			reg, _, _ := strings.Cut(rec.Repo(), "/")
			t = &lsTag{Name: g.name, Registry: reg, Repository: rec.Repository, Tag: rec.Tag, Digest: rec.Digest,
				repo: rec.Repo(), alias: rec.RepoAlias()}
			t.hub = t.alias != ""
			groups[g] = t
			tags = append(tags, t)
		}
		t.Records++
		if rec.Validated.After(t.Validated) {
			t.Validated = rec.Validated.UTC()
		}
		if exp := rec.ExpiresAt(ttl); exp.After(t.Expires) {
			t.Expires = exp.UTC()
		}
		if t.MediaType == "" {
			t.MediaType = rec.MediaType
		}
	}
	blobs := map[digest.Digest]*lsBlob{}
	blob := func(d digest.Digest) *lsBlob {
		b := blobs[d]
		if b == nil {
			e, ok := scan.entries[cachestore.BlobKey(d)]
			if !ok {
				return nil
			}
			b = &lsBlob{Digest: d, Size: e.Size, LastUse: e.LastUse.UTC(), Repositories: []string{}}
			blobs[d] = b
		}
		return b
	}
	for key := range scan.entries {
		if d, ok := keyDigest(key); ok && strings.HasPrefix(key, "blobs/") {
			blob(d)
		}
	}
	for _, m := range scan.manifests {
		for _, d := range m.blobs {
			if b := blob(d); b != nil {
				b.Manifests++
			}
		}
	}
	var out lsOutput
	for _, t := range tags {
		t.Expired = now.After(t.Expires)
		manifests, reached := scan.reach(t.Digest)
		var last time.Time
		for _, m := range manifests {
			for _, key := range []string{cachestore.ManifestKey(m), cachestore.ManifestMetaKey(m)} {
				if e, ok := scan.entries[key]; ok {
					t.Size += e.Size
					last = maxTime(last, e.LastUse)
				}
			}
		}
		for _, d := range reached {
			if b := blob(d); b != nil {
				t.Size += b.Size
				last = maxTime(last, b.LastUse)
				b.tags = append(b.tags, t)
			}
		}
		if !last.IsZero() {
			last = last.UTC()
			t.LastUse = &last
		}
		if f.tag(t) {
			out.Tags = append(out.Tags, *t)
		}
	}
	for _, b := range blobs {
		keep := f.none()
		for _, t := range b.tags {
			if !slices.Contains(b.Repositories, t.repo) {
				b.Repositories = append(b.Repositories, t.repo)
			}
			keep = keep || f.tag(t)
		}
		slices.Sort(b.Repositories)
		if keep {
			out.Blobs = append(out.Blobs, *b)
			out.BlobBytes += b.Size
		}
	}
	if out.Tags == nil {
		out.Tags = []lsTag{}
	}
	if out.Blobs == nil {
		out.Blobs = []lsBlob{}
	}
	return out
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// sortListing puts the tags and blobs in the order --sort asks for.
func sortListing(out *lsOutput, order string) {
	byName := func(a, b *lsTag) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(string(a.Digest), string(b.Digest)))
	}
	blobName := func(a, b *lsBlob) int {
		// Blobs of no repository last.
		if (len(a.Repositories) == 0) != (len(b.Repositories) == 0) {
			if len(a.Repositories) == 0 {
				return 1
			}
			return -1
		}
		return cmp.Or(slices.Compare(a.Repositories, b.Repositories), strings.Compare(string(a.Digest), string(b.Digest)))
	}
	lastUse := func(t *lsTag) time.Time {
		if t.LastUse == nil {
			return time.Time{}
		}
		return *t.LastUse
	}
	switch order {
	case "size":
		slices.SortFunc(out.Tags, func(a, b lsTag) int { return cmp.Or(cmp.Compare(b.Size, a.Size), byName(&a, &b)) })
		slices.SortFunc(out.Blobs, func(a, b lsBlob) int { return cmp.Or(cmp.Compare(b.Size, a.Size), blobName(&a, &b)) })
	case "used":
		slices.SortFunc(out.Tags, func(a, b lsTag) int { return cmp.Or(lastUse(&a).Compare(lastUse(&b)), byName(&a, &b)) })
		slices.SortFunc(out.Blobs, func(a, b lsBlob) int { return cmp.Or(a.LastUse.Compare(b.LastUse), blobName(&a, &b)) })
	default:
		slices.SortFunc(out.Tags, func(a, b lsTag) int { return byName(&a, &b) })
		slices.SortFunc(out.Blobs, func(a, b lsBlob) int { return blobName(&a, &b) })
	}
}

// cacheTime writes a time as the cache commands show it, in UTC.
func cacheTime(t time.Time) string { return t.UTC().Format(time.DateTime) }

func printListing(w io.Writer, out lsOutput) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(out.Tags) > 0 {
		fmt.Fprintln(tw, "TAG\tDIGEST\tSIZE\tLAST USE (UTC)\tEXPIRES (UTC)")
		for _, t := range out.Tags {
			used := "-"
			if t.LastUse != nil {
				used = cacheTime(*t.LastUse)
			}
			expires := cacheTime(t.Expires)
			if t.Expired {
				expires += " (expired)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Name, t.Digest, bytesize.Format(t.Size), used, expires)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	if len(out.Blobs) > 0 {
		fmt.Fprintln(tw, "BLOB\tSIZE\tLAST USE (UTC)\tREPOSITORIES")
		for _, b := range out.Blobs {
			repos := strings.Join(b.Repositories, ", ")
			switch {
			case repos != "":
			case b.Manifests > 0:
				repos = "(untagged manifests only)"
			default:
				repos = "(unreferenced)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", b.Digest, bytesize.Format(b.Size), cacheTime(b.LastUse), repos)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	_, err := fmt.Fprintf(w, "%s, %s (%s)\n", plural(len(out.Tags), "tag"), plural(len(out.Blobs), "blob"), bytesize.Format(out.BlobBytes))
	return err
}
