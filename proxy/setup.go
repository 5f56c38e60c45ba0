package proxy

import (
	"bytes"
	"fmt"
	"io/fs"
	"net/http"
	"regexp"
	"slices"
	"strings"
)

// The node setup scripts (package scripts) are served on the proxy port as
// GET /setup/CLIENT, for `curl -fsS http://PROXY:3128/setup/docker | sh -s
// -- --ca-sha256 HEX`. A pipe into sh can source nothing, so each is served
// as one file: setup-CLIENT.sh with setup-lib.sh in place of the line that
// sources it, and the lib's served_ lines filled in with the proxy's
// address and --registries. That layout is a contract with the files,
// documented at the top of setup-lib.sh; newSetupPages checks it at start.
const (
	setupLib            = "setup-lib.sh"
	setupSourceLine     = `. "$(dirname "$0")/setup-lib.sh"`
	setupProxyLine      = "served_proxy="
	setupRegistriesLine = "served_registries="
)

// setupClients are the clients with a setup script, setup-CLIENT.sh.
var setupClients = []string{"docker", "containerd", "podman", "enroot"}

// setupPages serves the setup scripts. The zero value serves none.
type setupPages struct {
	// scripts holds each client's script, split where the proxy's address
	// goes, which only a request knows. Nil means no scripts.
	scripts map[string]setupScript
}

type setupScript struct{ head, tail []byte }

// newSetupPages assembles the scripts in fsys for a proxy with the
// allow-list registries. A nil fsys serves none.
func newSetupPages(fsys fs.FS, registries []string) (setupPages, error) {
	if fsys == nil {
		return setupPages{}, nil
	}
	lib, err := fs.ReadFile(fsys, setupLib)
	if err != nil {
		return setupPages{}, fmt.Errorf("proxy: setup scripts: %w", err)
	}
	lib, err = replaceLine(lib, setupRegistriesLine, setupRegistriesLine+shellQuote(servedRegistries(registries)))
	if err != nil {
		return setupPages{}, fmt.Errorf("proxy: setup scripts: %s: %w", setupLib, err)
	}
	pages := setupPages{scripts: map[string]setupScript{}}
	for _, client := range setupClients {
		s, err := assembleScript(fsys, client, lib)
		if err != nil {
			return setupPages{}, fmt.Errorf("proxy: setup scripts: %w", err)
		}
		pages.scripts[client] = s
	}
	return pages, nil
}

// assembleScript inlines lib into setup-CLIENT.sh and splits the result at
// the served_proxy line.
func assembleScript(fsys fs.FS, client string, lib []byte) (setupScript, error) {
	name := "setup-" + client + ".sh"
	src, err := fs.ReadFile(fsys, name)
	if err != nil {
		return setupScript{}, err
	}
	// The lib's first line is its #! line, which would read as a comment.
	_, body, _ := bytes.Cut(lib, []byte("\n"))
	inlined := "# ---- " + setupLib + ", inlined by regproxy ----\n" + string(body) +
		"# ---- end of " + setupLib + " ----"
	script, err := replaceLine(src, setupSourceLine, inlined)
	if err != nil {
		return setupScript{}, fmt.Errorf("%s: %w", name, err)
	}
	shebang, rest, _ := bytes.Cut(script, []byte("\n"))
	note := fmt.Sprintf("\n# Served by regproxy at /setup/%s: scripts/%s with scripts/%s inlined.\n", client, name, setupLib)
	script = slices.Concat(shebang, []byte(note), rest)
	line := []byte("\n" + setupProxyLine + "\n")
	if n := bytes.Count(script, line); n != 1 {
		return setupScript{}, fmt.Errorf("%s: %d lines %q, want 1", name, n, setupProxyLine)
	}
	i := bytes.Index(script, line)
	return setupScript{head: script[:i+1], tail: script[i+1+len(setupProxyLine)+1:]}, nil
}

// replaceLine replaces the one line of src that is exactly old with new.
func replaceLine(src []byte, old, new string) ([]byte, error) {
	lines := strings.SplitAfter(string(src), "\n")
	found := -1
	for i, line := range lines {
		if strings.TrimRight(line, "\n") == old {
			if found >= 0 {
				return nil, fmt.Errorf("line %q appears twice", old)
			}
			found = i
		}
	}
	if found < 0 {
		return nil, fmt.Errorf("no line %q", old)
	}
	lines[found] = new + "\n"
	return []byte(strings.Join(lines, "")), nil
}

// servedHost matches what a served script may name as the proxy: a DNS
// name or an [IPv6] literal, and an optional port. The script is shell
// code, so anything else in a Host header is left out rather than quoted.
var servedHost = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$`)

// servedRegistries returns the allow-list entries a script can take, space
// separated. Every entry passed CheckRegistries; the check here is only
// what makes the result safe to quote for sh.
func servedRegistries(registries []string) string {
	var ok []string
	for _, r := range registries {
		if r = strings.ToLower(strings.TrimSpace(r)); servedHost.MatchString(r) {
			ok = append(ok, r)
		}
	}
	return strings.Join(ok, " ")
}

// shellQuote quotes s for sh. s holds no single quote (it matched
// servedHost or is a list of such).
func shellQuote(s string) string { return "'" + s + "'" }

// serveSetup answers GET /setup/CLIENT with CLIENT's script, its default
// proxy being the address the request came to (the Host header), and
// /setup/ with a list of them. Anything else is a 404.
//
// Security: the script and the CA it fetches travel over plain HTTP, so
// the script refuses a CA whose fingerprint the admin did not give it.
// The Host header comes from the client, and goes into the script only if
// it is a plain host and port (servedHost): a node that sends a strange
// Host gets a script with no default proxy, never shell code of its own.
func (p *Proxy) serveSetup(w http.ResponseWriter, r *http.Request) {
	client, ok := strings.CutPrefix(r.URL.Path, "/setup/")
	if !ok || p.setup.scripts == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if client == "" {
		p.setup.writeIndex(w, r.Host, caFingerprint(p.ca.CertPEM()))
		return
	}
	s, ok := p.setup.scripts[client]
	if !ok {
		http.NotFound(w, r)
		return
	}
	proxy := ""
	if servedHost.MatchString(r.Host) {
		proxy = shellQuote("http://" + r.Host + "/")
	}
	w.Write(slices.Concat(s.head, []byte(setupProxyLine+proxy+"\n"), s.tail))
}

// writeIndex lists the scripts, as one-liners for the proxy at host whose
// CA has fingerprint fp.
func (s setupPages) writeIndex(w http.ResponseWriter, host, fp string) {
	if !servedHost.MatchString(host) {
		host = "PROXY:3128"
	}
	fmt.Fprintf(w, "regproxy's node setup scripts. On each node, as root:\n\n")
	for _, client := range setupClients {
		fmt.Fprintf(w, "  %s\n", SetupCommand(host, client, fp))
	}
	fmt.Fprintf(w, "\nThis page comes over plain HTTP: compare ca_sha256=%s with the one regproxy logs at start.\n", fp)
	fmt.Fprintf(w, "Add --help for what each does, --dry-run to see the changes first.\n")
}
