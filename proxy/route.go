package proxy

import (
	"crypto/sha256"
	"net/http"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// kind says which cache a registry request may be served from.
type kind int

const (
	kindOther    kind = iota // passed through, never cached
	kindBlob                 // GET/HEAD /v2/<name>/blobs/<digest>
	kindManifest             // GET/HEAD /v2/<name>/manifests/<reference>
)

// regPath is a registry request's path, parsed once and validated.
type regPath struct {
	Kind kind
	Name string // repository name, e.g. library/alpine
	// Reference is the tag or digest as it appeared in the path.
	Reference string
	// Digest is set for blobs and for manifests by digest; empty for tags.
	Digest digest.Digest
}

// IsTag reports whether a manifest request names a tag.
func (p regPath) IsTag() bool { return p.Kind == kindManifest && p.Digest == "" }

// parsePath classifies a request on an intercepted registry host. Only GET
// and HEAD of blobs and manifests are cacheable; every other request,
// uploads and pushes included, is kindOther. A cacheable path with a bad
// name, digest or tag is an error, so that no bad input reaches the cache.
// Any path with "." or ".." segments or escaped slashes is refused outright.
func parsePath(r *http.Request) (regPath, error) {
	if err := checkSegments(r); err != nil {
		return regPath{}, err
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return regPath{Kind: kindOther}, nil
	}
	return parseObjectPath(r.URL.Path)
}

// parseObjectPath parses "/v2/<name>/blobs/<digest>" and
// "/v2/<name>/manifests/<reference>" whatever the method; any other path is
// kindOther.
func parseObjectPath(path string) (regPath, error) {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return regPath{Kind: kindOther}, nil
	}
	// Parse from the end: a repository may itself contain a "blobs" or
	// "manifests" component (distribution spec, "Pulling").
	i := strings.LastIndexByte(rest, '/')
	j := strings.LastIndexByte(rest[:max(i, 0)], '/')
	if i < 0 || j < 0 {
		return regPath{Kind: kindOther}, nil
	}
	name, section, ref := rest[:j], rest[j+1:i], rest[i+1:]
	switch section {
	case "blobs":
		return parseBlob(name, ref)
	case "manifests":
		return parseManifest(name, ref)
	}
	return regPath{Kind: kindOther}, nil
}

// checkSegments refuses dot segments (which net/http does not clean for
// requests it proxies) and percent-encoded slashes, which would let a path
// mean one thing to us and another upstream.
func checkSegments(r *http.Request) error {
	for seg := range strings.SplitSeq(r.URL.Path, "/") {
		if seg == "." || seg == ".." {
			return errPathInvalid("path has dot segments")
		}
	}
	if strings.Contains(strings.ToLower(r.URL.RawPath), "%2f") {
		return errPathInvalid("path has escaped slashes")
	}
	return nil
}

func parseBlob(name, ref string) (regPath, error) {
	if err := checkName(name); err != nil {
		return regPath{}, err
	}
	d, err := parseDigest(ref)
	if err != nil {
		return regPath{}, err
	}
	return regPath{Kind: kindBlob, Name: name, Reference: ref, Digest: d}, nil
}

func parseManifest(name, ref string) (regPath, error) {
	if err := checkName(name); err != nil {
		return regPath{}, err
	}
	p := regPath{Kind: kindManifest, Name: name, Reference: ref}
	if strings.Contains(ref, ":") {
		d, err := parseDigest(ref)
		if err != nil {
			return regPath{}, err
		}
		p.Digest = d
		return p, nil
	}
	if !anchoredTag(ref) {
		return regPath{}, errTagInvalid("invalid tag")
	}
	return p, nil
}

// anchoredTag reports whether s is a whole tag in the grammar of
// distribution/reference (TagRegexp): a word character, then up to 127 word
// characters, dots and dashes. It runs on every manifest request, so it is
// written out rather than matched with the regexp; FuzzAnchoredTag holds
// it to the regexp.
func anchoredTag(s string) bool {
	if s == "" || len(s) > maxTagLength || !isWordChar(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isWordChar(c) && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// maxTagLength is the longest tag the grammar allows.
const maxTagLength = 128

// isWordChar reports whether c is in the regexp class \w: [0-9A-Za-z_].
func isWordChar(c byte) bool {
	return isLowerAlnum(c) || 'A' <= c && c <= 'Z' || c == '_'
}

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// checkName validates a repository name against the distribution/reference
// grammar, read as the path part of a name (reference's remote-name), so
// that a first component such as "foo:5000" is refused: path components
// joined by '/', each lowercase alphanumeric runs joined by one separator
// ('.', '_', "__" or a run of '-'), and at most
// reference.RepositoryNameTotalLengthMax characters. It runs on every
// request, so the grammar is written out; FuzzCheckName holds it to
// reference.WithName.
func checkName(name string) error {
	if name == "" || len(name) > reference.RepositoryNameTotalLengthMax {
		return errNameInvalid("invalid repository name")
	}
	for comp := range strings.SplitSeq(name, "/") {
		if !validPathComponent(comp) {
			return errNameInvalid("invalid repository name")
		}
	}
	return nil
}

// validPathComponent reports whether c is one path component of a
// repository name: alphanumeric [separator alphanumeric]*.
func validPathComponent(c string) bool {
	i := 0
	for {
		start := i
		for i < len(c) && isLowerAlnum(c[i]) {
			i++
		}
		switch {
		case i == start:
			return false // empty, or a separator not between alphanumerics
		case i == len(c):
			return true
		case c[i] == '.':
			i++
		case c[i] == '_':
			i++
			if i < len(c) && c[i] == '_' {
				i++
			}
		case c[i] == '-':
			for i < len(c) && c[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

// parseDigest accepts sha256 digests only: 64 lowercase hex digits. That is
// what every registry serves, and the cache keys assume it.
func parseDigest(s string) (digest.Digest, error) {
	hex, ok := strings.CutPrefix(s, string(digest.SHA256)+":")
	if !ok || len(hex) != 2*sha256.Size {
		return "", errDigestInvalid("invalid digest; want sha256:<64 hex digits>")
	}
	for i := range len(hex) {
		if c := hex[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", errDigestInvalid("invalid digest; want sha256:<64 hex digits>")
		}
	}
	return digest.Digest(s), nil
}

// Kinds of intercepted requests, as the access log names them.
const (
	logPing      = "ping"      // /v2/, the API version check
	logCatalog   = "catalog"   // /v2/_catalog
	logTags      = "tags"      // /v2/<name>/tags/list
	logManifest  = "manifest"  // /v2/<name>/manifests/<reference>, any method
	logBlob      = "blob"      // /v2/<name>/blobs/<digest>, any method
	logUpload    = "upload"    // /v2/<name>/blobs/uploads/[<id>]
	logReferrers = "referrers" // /v2/<name>/referrers/<digest>
	logToken     = "token"     // a token request (see isTokenRequest)
	logOther     = "other"
)

// describePath names, for the access log, what an intercepted request asks
// for: its kind (one of the log* constants) and the repository and
// reference it names. Paths are parsed from the end, as parseObjectPath
// does. A name or reference that is not valid is not logged: it is the
// client's text.
func describePath(r *http.Request) (kind, name, ref string) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/v2/")
	switch {
	case r.URL.Path == "/v2" || ok && rest == "":
		return logPing, "", ""
	case ok && rest == "_catalog":
		return logCatalog, "", ""
	case ok:
		kind, name, ref = describeRepoPath(rest)
	}
	if kind == "" {
		if isTokenRequest(r) {
			return logToken, "", ""
		}
		return logOther, "", ""
	}
	if checkName(name) != nil {
		return kind, "", ""
	}
	switch kind {
	case logBlob, logManifest:
		if rp, err := parseObjectPath(r.URL.Path); err == nil && rp.Kind != kindOther {
			return kind, name, rp.Reference
		}
	case logReferrers:
		if _, err := parseDigest(ref); err == nil {
			return kind, name, ref
		}
	}
	return kind, name, ""
}

// describeRepoPath splits a path below /v2/ into kind, repository name and
// last element, or returns kind "" for a path that is not a repository's.
// The path is read from its end, element by element, without splitting
// all of it: this runs on every request.
func describeRepoPath(rest string) (kind, name, last string) {
	head1, last, ok1 := cutLastElement(strings.TrimSuffix(rest, "/"))
	head2, second, ok2 := cutLastElement(head1)
	if !ok1 || !ok2 { // fewer than three elements
		return "", "", ""
	}
	head3, third, ok3 := cutLastElement(head2)
	switch {
	case second == "tags" && last == "list":
		return logTags, head2, ""
	case second == "blobs" && last == "uploads":
		return logUpload, head2, ""
	case ok3 && third == "blobs" && second == "uploads":
		return logUpload, head3, "" // the upload's id stays out of the log
	case second == "blobs":
		return logBlob, head2, last
	case second == "manifests":
		return logManifest, head2, last
	case second == "referrers":
		return logReferrers, head2, last
	}
	return "", "", ""
}

// cutLastElement splits p at its last '/': what comes before it and the
// element after it. ok is false when p has no '/'.
func cutLastElement(p string) (head, last string, ok bool) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p, false
	}
	return p[:i], p[i+1:], true
}

// isTokenRequest recognises a request to a registry's token service, which
// an intercepted host may run beside (ghcr.io, quay.io) or instead of
// (auth.docker.io) the registry API: a GET with the service or scope
// parameters of the token protocol, or an OAuth2 form POST
// (https://distribution.github.io/distribution/spec/auth/).
func isTokenRequest(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet:
		q := r.URL.Query()
		return q.Has("service") || q.Has("scope")
	case http.MethodPost:
		ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
		return strings.EqualFold(strings.TrimSpace(ct), "application/x-www-form-urlencoded")
	}
	return false
}
