package proxy

import (
	"bufio"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/distribution/reference"
)

// The oracles below are written from the OCI distribution spec
// ("Pulling manifests"), not from the code under test: a repository name is
// path components joined by '/', a tag is at most 128 word characters,
// dots and dashes, not starting with a dot or dash.
var (
	fuzzNameRE   = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	fuzzTagRE    = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	fuzzSHA256RE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
)

const fuzzHex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// fuzzPaths seed the path fuzzers: good paths of each kind, and the bad
// inputs the router must refuse or pass through.
var fuzzPaths = []string{
	"/v2/",
	"/v2/library/alpine/blobs/sha256:" + fuzzHex,
	"/v2/library/alpine/manifests/3.20",
	"/v2/library/alpine/manifests/sha256:" + fuzzHex,
	"/v2/a/blobs/blobs/sha256:" + fuzzHex,
	"/v2/a/manifests/b/manifests/latest",
	"/v2/a-b__c.d/e--f/manifests/_x.Y-1",
	"/v2/library/alpine/tags/list",
	"/v2/library/alpine/blobs/uploads/",
	"/v2/library/alpine/blobs/sha256:" + strings.ToUpper(fuzzHex),
	"/v2/library/alpine/blobs/sha512:" + fuzzHex + fuzzHex,
	"/v2/library/alpine/blobs/sha256:" + fuzzHex[:63],
	"/v2/library/alpine/manifests/.hidden",
	"/v2/library/alpine/manifests/" + strings.Repeat("t", 129),
	"/v2/library/../secret/blobs/sha256:" + fuzzHex,
	"/v2/./library/alpine/manifests/latest",
	"/v2/library%2falpine/manifests/latest",
	"/v2/Library/alpine/manifests/latest",
	"/v2/foo:5000/alpine/manifests/latest",
	"/v2//alpine/manifests/latest",
	"/v2/alpine//manifests/latest",
	"/v2/a/manifests/",
	"/v1/library/alpine/manifests/latest",
}

// FuzzParsePath checks the router on whole request lines as net/http reads
// them. An accepted blob or manifest path is exactly "/v2/" + Name + "/" +
// section + "/" + Reference, parses to the same regPath when rebuilt, has
// a name in the spec's grammar and a sha256 digest or a spec tag, and has
// no dot segments or escaped slashes. Only GET and HEAD are cacheable.
func FuzzParsePath(f *testing.F) {
	for _, p := range fuzzPaths {
		f.Add("GET", p)
	}
	f.Add("HEAD", "/v2/library/alpine/manifests/latest")
	f.Add("PUT", "/v2/library/alpine/manifests/latest")
	f.Add("GET", "/v2/library/%2e%2e/alpine/manifests/latest")
	f.Add("GET", "/v2/library/al%70ine/manifests/latest")
	f.Add("GET", "https://registry.test/v2/library/alpine/manifests/latest?ns=docker.io")
	f.Fuzz(func(t *testing.T, method, target string) {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(method + " " + target + " HTTP/1.1\r\nHost: registry.test\r\n\r\n")))
		if err != nil {
			return // net/http would have refused it before routing
		}
		p, err := parsePath(r)
		if err != nil || p.Kind == kindOther {
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			t.Fatalf("%s %q: kind %d; only GET and HEAD are cacheable", r.Method, target, p.Kind)
		}
		for seg := range strings.SplitSeq(r.URL.Path, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("%q: accepted %+v with a dot segment", target, p)
			}
		}
		if strings.Contains(strings.ToLower(r.URL.RawPath), "%2f") {
			t.Fatalf("%q: accepted %+v with an escaped slash", target, p)
		}
		if want := fuzzObjectPath(p); r.URL.Path != want {
			t.Fatalf("%q: path %q parsed as %+v, which rebuilds as %q", target, r.URL.Path, p, want)
		}
		fuzzCheckObjectPath(t, target, p)
	})
}

// FuzzParseObjectPath checks parseObjectPath on its own, as notePush calls
// it on pushes and deletes, without parsePath's segment checks: the name
// grammar alone must keep dot segments and empty components out.
func FuzzParseObjectPath(f *testing.F) {
	for _, p := range fuzzPaths {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, path string) {
		p, err := parseObjectPath(path)
		if err != nil || p.Kind == kindOther {
			return
		}
		if want := fuzzObjectPath(p); path != want {
			t.Fatalf("%q parsed as %+v, which rebuilds as %q", path, p, want)
		}
		for seg := range strings.SplitSeq(path[1:], "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("%q: accepted %+v with segment %q", path, p, seg)
			}
		}
		fuzzCheckObjectPath(t, path, p)
	})
}

// fuzzObjectPath rebuilds the path a regPath was parsed from.
func fuzzObjectPath(p regPath) string {
	section := "blobs"
	if p.Kind == kindManifest {
		section = "manifests"
	}
	return "/v2/" + p.Name + "/" + section + "/" + p.Reference
}

// fuzzCheckObjectPath checks the parts of an accepted blob or manifest path
// against the oracles, and that the path rebuilt from them parses the same.
func fuzzCheckObjectPath(t *testing.T, in string, p regPath) {
	t.Helper()
	fuzzCheckName(t, p.Name)
	switch {
	case p.Kind == kindBlob && p.Digest == "":
		t.Fatalf("%q: blob %+v without a digest", in, p)
	case p.Digest != "" && (!fuzzSHA256RE.MatchString(string(p.Digest)) || p.Reference != p.Digest.String()):
		t.Fatalf("%q: digest %q (reference %q); want sha256 with 64 lowercase hex digits", in, p.Digest, p.Reference)
	case p.Digest == "" && !fuzzTagRE.MatchString(p.Reference):
		t.Fatalf("%q: tag %q is not in the spec's tag grammar", in, p.Reference)
	case p.IsTag() != (p.Digest == ""):
		t.Fatalf("%q: IsTag() = %v for %+v", in, p.IsTag(), p)
	}
	again, err := parseObjectPath(fuzzObjectPath(p))
	if err != nil || again != p {
		t.Fatalf("%q: %+v rebuilt as %q parses as %+v, %v", in, p, fuzzObjectPath(p), again, err)
	}
}

// fuzzCheckName checks a name the router accepted against the spec's
// grammar and against distribution/reference, read as the path part of a
// reference on another registry.
func fuzzCheckName(t *testing.T, name string) {
	t.Helper()
	if len(name) > reference.RepositoryNameTotalLengthMax || !fuzzNameRE.MatchString(name) {
		t.Fatalf("accepted name %q is not in the spec's name grammar", name)
	}
	named, err := reference.ParseNamed("registry.test/" + name)
	if err != nil || reference.Path(named) != name || reference.Domain(named) != "registry.test" {
		t.Fatalf("accepted name %q: reference.ParseNamed gives %v, %v", name, named, err)
	}
}

// FuzzParseDigest checks that parseDigest accepts exactly "sha256:" and 64
// lowercase hex digits, and returns its input unchanged.
func FuzzParseDigest(f *testing.F) {
	for _, s := range []string{
		"sha256:" + fuzzHex, "sha256:" + strings.ToUpper(fuzzHex), "sha256:" + fuzzHex[:63], "sha256:" + fuzzHex + "0",
		"sha512:" + fuzzHex + fuzzHex, "sha256:", ":" + fuzzHex, "sha256+b64:" + fuzzHex, "SHA256:" + fuzzHex,
		"sha256:" + fuzzHex + "\n", " sha256:" + fuzzHex, "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseDigest(s)
		if want := fuzzSHA256RE.MatchString(s); (err == nil) != want {
			t.Fatalf("parseDigest(%q) = %q, %v; want accepted %v", s, d, err, want)
		}
		if err == nil && string(d) != s {
			t.Fatalf("parseDigest(%q) = %q; want its input", s, d)
		}
	})
}

// FuzzParseManifest checks names and manifest references both ways against
// the spec's grammar: what the oracles accept is accepted, and the rest is
// refused with the error code of the part at fault.
func FuzzParseManifest(f *testing.F) {
	for _, s := range [][2]string{
		{"library/alpine", "latest"}, {"library/alpine", "sha256:" + fuzzHex}, {"a", "_"},
		{"a-b__c.d/e", strings.Repeat("t", 128)}, {"a", strings.Repeat("t", 129)},
		{"a", "-x"}, {"a", ".x"}, {"a", "x\n"}, {"a", "sha256:" + fuzzHex[:10]}, {"a", "x:y"},
		{"A", "latest"}, {"a_", "latest"}, {"a___b", "latest"}, {"foo:5000/a", "latest"}, {"a/", "latest"},
		{"a//b", "latest"}, {"", "latest"}, {"../a", "latest"}, {"a/./b", "latest"},
		{strings.Repeat("a", 255), "latest"}, {strings.Repeat("a", 256), "latest"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, name, ref string) {
		p, err := parseManifest(name, ref)
		var re *regError
		switch {
		case !fuzzNameRE.MatchString(name) || len(name) > reference.RepositoryNameTotalLengthMax:
			if err == nil || !errors.As(err, &re) || re.Code != "NAME_INVALID" {
				t.Fatalf("parseManifest(%q, %q) = %+v, %v; want NAME_INVALID", name, ref, p, err)
			}
		case strings.Contains(ref, ":"):
			if fuzzSHA256RE.MatchString(ref) != (err == nil) {
				t.Fatalf("parseManifest(%q, %q) = %+v, %v; want accepted %v", name, ref, p, err, fuzzSHA256RE.MatchString(ref))
			}
		default:
			if fuzzTagRE.MatchString(ref) != (err == nil) || anchoredTag(ref) != (err == nil) {
				t.Fatalf("parseManifest(%q, %q) = %+v, %v; want accepted %v", name, ref, p, err, fuzzTagRE.MatchString(ref))
			}
		}
		if err == nil {
			fuzzCheckObjectPath(t, name+" "+ref, p)
		}
	})
}

// FuzzCheckName holds checkName, written out for speed, to
// distribution/reference: a name is accepted exactly when WithName accepts
// it as the path part of a name on another registry.
func FuzzCheckName(f *testing.F) {
	for _, s := range []string{
		"library/alpine", "a", "a-b__c.d/e--f", "a.b_c", "a_", "_a", "a__b", "a___b", "a._b", "a-_b",
		"a-", "a--", "a/", "/a", "a//b", "A", "a/B", "foo:5000/a", "a b", "a/./b", "../a", ".a", "a.",
		"é", "a\x00", strings.Repeat("a", 255), strings.Repeat("a", 256), strings.Repeat("ab/", 80) + "c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		_, err := reference.WithName("regproxy.invalid/" + name)
		want := err == nil && name != "" && len(name) <= reference.RepositoryNameTotalLengthMax
		if got := checkName(name) == nil; got != want {
			t.Fatalf("checkName(%q) accepts %v; reference.WithName says %v (%v)", name, got, want, err)
		}
	})
}

// FuzzAnchoredTag holds anchoredTag, written out for speed, to
// distribution/reference's tag grammar.
func FuzzAnchoredTag(f *testing.F) {
	for _, s := range []string{"latest", "_", "3.20", "v1.0-rc.1", "-x", ".x", "x:y", "x\n", "é", "",
		strings.Repeat("t", 128), strings.Repeat("t", 129)} {
		f.Add(s)
	}
	tagRE := regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)
	f.Fuzz(func(t *testing.T, tag string) {
		if got, want := anchoredTag(tag), tagRE.MatchString(tag); got != want {
			t.Fatalf("anchoredTag(%q) = %v; reference.TagRegexp says %v", tag, got, want)
		}
	})
}

// FuzzDescribeRepoPath holds describeRepoPath, which reads a path from its
// end without splitting it, to the plain reading: split at every '/'.
func FuzzDescribeRepoPath(f *testing.F) {
	for _, p := range fuzzPaths {
		f.Add(strings.TrimPrefix(p, "/v2/"))
	}
	for _, s := range []string{"a/tags/list", "a/tags/list/", "a/blobs/uploads/", "a/blobs/uploads/id",
		"a/b/blobs/uploads/id/", "blobs/uploads/id", "a/referrers/sha256:x", "a//manifests/x", "/manifests/x",
		"manifests/x", "x", "", "/", "//", "a/blobs/", "a/blobs//"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rest string) {
		kind, name, last := describeRepoPath(rest)
		wantKind, wantName, wantLast := splitRepoPath(rest)
		if kind != wantKind || name != wantName || last != wantLast {
			t.Fatalf("describeRepoPath(%q) = %q, %q, %q; want %q, %q, %q", rest, kind, name, last, wantKind, wantName, wantLast)
		}
	})
}

// splitRepoPath is describeRepoPath's oracle: the path split at every '/'.
func splitRepoPath(rest string) (kind, name, last string) {
	el := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	n := len(el)
	join := func(k int) string { return strings.Join(el[:n-k], "/") }
	switch {
	case n >= 3 && el[n-2] == "tags" && el[n-1] == "list":
		return logTags, join(2), ""
	case n >= 3 && el[n-2] == "blobs" && el[n-1] == "uploads":
		return logUpload, join(2), ""
	case n >= 4 && el[n-3] == "blobs" && el[n-2] == "uploads":
		return logUpload, join(3), ""
	case n >= 3 && el[n-2] == "blobs":
		return logBlob, join(2), el[n-1]
	case n >= 3 && el[n-2] == "manifests":
		return logManifest, join(2), el[n-1]
	case n >= 3 && el[n-2] == "referrers":
		return logReferrers, join(2), el[n-1]
	}
	return "", "", ""
}
