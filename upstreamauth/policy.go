package upstreamauth

import (
	"net/http"
	"slices"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// mayUseConfigured is the rule for regproxy's configured credentials: they
// are for pulls only. A request may carry them, or a token fetched with
// them, if and only if
//
//  1. it carries no Authorization of its own: a client's own credentials
//     always win, and are not ours to replace;
//  2. its method is GET or HEAD;
//  3. its path is a pull endpoint of the distribution spec
//     (https://github.com/opencontainers/distribution-spec/blob/main/spec.md#endpoints):
//     the "/v2/" ping, "/v2/<name>/manifests/<reference>",
//     "/v2/<name>/blobs/<digest>" or "/v2/<name>/tags/list", where name,
//     tag and digest are valid (see pullRepo);
//  4. its raw path holds no escaped slash, which would let the path mean
//     one thing here and another upstream.
//
// Everything else goes upstream exactly as the client sent it, that is
// anonymously: pushes, uploads and deletes, the catalog, the referrers
// API, and token endpoints ("/token", "/v2/auth", any path not of the form
// above). Whoever reaches the proxy port is a stranger to the configured
// accounts, and a pull is all they are lent.
func mayUseConfigured(req *http.Request) bool {
	if req.Header.Get("Authorization") != "" {
		return false
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return false
	}
	if strings.Contains(strings.ToLower(req.URL.RawPath), "%2f") {
		return false
	}
	_, ok := pullRepo(req.URL.Path)
	return ok
}

// pullRepo parses the path of a pull endpoint (see mayUseConfigured) and
// returns the repository it names, "" for the "/v2/" ping. It returns false
// for any other path. The path is parsed from the end, as the spec says,
// since a repository name may itself hold "manifests" or "blobs". The
// grammar of distribution/reference admits no "." or ".." segment in a
// name, and a tag cannot start with a dot, so no accepted path has dot
// segments.
func pullRepo(path string) (string, bool) {
	rest, ok := strings.CutPrefix(path, "/v2/")
	switch {
	case !ok:
		return "", false
	case rest == "":
		return "", true // the API version check
	}
	if name, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		return name, validName(name)
	}
	i := strings.LastIndexByte(rest, '/')
	j := strings.LastIndexByte(rest[:max(i, 0)], '/')
	if i < 0 || j < 0 {
		return "", false
	}
	name, section, ref := rest[:j], rest[j+1:i], rest[i+1:]
	switch section {
	case "manifests":
		return name, validName(name) && (validTag(ref) || validDigest(ref))
	case "blobs":
		return name, validName(name) && validDigest(ref)
	}
	return "", false
}

// validName checks a repository name against the distribution/reference
// grammar. The placeholder domain makes the grammar read all of name as
// the path part, so a first component such as "foo:5000" is refused.
func validName(name string) bool {
	if name == "" || len(name) > reference.RepositoryNameTotalLengthMax {
		return false
	}
	_, err := reference.WithName("regproxy.invalid/" + name)
	return err == nil
}

func validTag(s string) bool {
	loc := reference.TagRegexp.FindStringIndex(s)
	return loc != nil && loc[0] == 0 && loc[1] == len(s)
}

func validDigest(s string) bool {
	_, err := digest.Parse(s)
	return err == nil
}

// repoScope returns the token scope that a pull of repo needs, "" for the
// ping, which needs none.
func repoScope(repo string) string {
	if repo == "" {
		return ""
	}
	return "repository:" + repo + ":pull"
}

// pullScopes reduces the scope of a challenge to what a pull needs, since
// a token fetched with the configured credentials serves pulls only: each
// "repository:NAME:ACTIONS" (or "repository(CLASS):NAME:ACTIONS") becomes
// "…:NAME:pull" whatever ACTIONS asked, push, delete and "*" included.
// Other resource types ("registry:catalog:*") are dropped: no request that
// may use the configured credentials needs them. Duplicates go.
func pullScopes(scope string) string {
	var out []string
	for _, s := range strings.Fields(scope) {
		// Type up to the first ':', actions after the last: the name
		// between may itself hold a ':' (a registry port).
		typ, rest, _ := strings.Cut(s, ":")
		i := strings.LastIndexByte(rest, ':')
		if i <= 0 || (typ != "repository" && !strings.HasPrefix(typ, "repository(")) {
			continue
		}
		if p := typ + ":" + rest[:i] + ":pull"; !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return strings.Join(out, " ")
}
