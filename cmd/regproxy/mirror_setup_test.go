package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// The mirror tests run real clients against regproxy's registry-mirror
// port, each configured only from what its setup script (setup-docker.sh,
// setup-containerd.sh, setup-podman.sh --mirror) wrote under --root: the
// files a node gets. No client is given regproxy's CA or a proxy for its
// mirror pulls.

// mirrorSetup is a hubSetup whose regproxy also serves its mirror port,
// in front of a Docker-Hub-like upstream named registryName.
type mirrorSetup struct {
	*hubSetup
	mirror string // the mirror port's host:port
}

// newMirrorSetup starts an upstream that answers to registryName
// (testupstream.WithHostName), pushes the hub setup's images to it, and
// starts regproxy with the mirror port on loopback. regproxy reaches the
// registry under its own port and on 443, the port of a registry an image
// reference or a mirror path prefix names without one.
func newMirrorSetup(t *testing.T, registryName string, extraFlags ...string) *mirrorSetup {
	t.Helper()
	up := testupstream.Start(t, testupstream.WithHub(), testupstream.WithHostName(registryName))
	s := pushHubImages(t, up)

	registries := registryName + " auth.test cdn.test"
	if registryName == "registry-1.docker.io" {
		registries = "docker.io auth.test cdn.test"
	}
	args := []string{"--registries", registries, "--upstream-ca", up.CAFile, "--mirror-listen", "127.0.0.1:0",
		"--resolve", registryName + ":443=" + up.Addr}
	for _, r := range up.Resolves() {
		args = append(args, "--resolve", r)
	}
	s.d = startDaemon(t, append(args, extraFlags...)...)
	s.caFile = s.fetchCA(t)
	up.ResetCounts()
	return &mirrorSetup{hubSetup: s, mirror: s.d.mirrorAddr(t)}
}

// mirrorLogEntry is the part of an access-log line the mirror tests look
// at: logEntry and the front end that served the request.
type mirrorLogEntry struct {
	logEntry
	Front string `json:"front"`
}

// mirrorEntries parses the log's JSON lines, skipping the first skip.
func (d *daemon) mirrorEntries(skip int) []mirrorLogEntry {
	var out []mirrorLogEntry
	for i, line := range strings.Split(d.log.String(), "\n") {
		var e mirrorLogEntry
		if i >= skip && json.Unmarshal([]byte(line), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// mirrorAddr reads the mirror port's address from its start-up line,
// which comes before "regproxy serving".
func (d *daemon) mirrorAddr(t *testing.T) string {
	t.Helper()
	for _, e := range d.mirrorEntries(0) {
		if e.Msg == "regproxy mirror serving" && e.Listen != "" {
			return e.Listen
		}
	}
	t.Fatalf(`no "regproxy mirror serving" line:\n%s`, d.log)
	return ""
}

// assertFront checks that every digest in digests was asked for after log
// line skip, under host, through front, with outcome.
func (s *mirrorSetup) assertFront(t *testing.T, skip int, what, host, front, outcome string, digests []string) {
	t.Helper()
	for _, d := range digests {
		if !s.waitEntry(skip, func(e mirrorLogEntry) bool {
			return e.Ref == d && e.Host == host && e.Front == front && e.Outcome == outcome
		}) {
			t.Errorf(`%s: no "host":%q,"front":%q,"outcome":%q line for %s`, what, host, front, outcome, d)
		}
	}
}

// waitEntry waits until a line after the first skip matches. A request's
// access-log line is written after its response, so it may trail the
// client's exit.
func (s *mirrorSetup) waitEntry(skip int, match func(mirrorLogEntry) bool) bool {
	for range pollTries {
		for _, e := range s.d.mirrorEntries(skip) {
			if match(e) {
				return true
			}
		}
		time.Sleep(pollInterval)
	}
	return false
}

// loggedBlobs returns the blob digests of the access-log lines after skip
// whose outcome starts with outcome.
func (s *mirrorSetup) loggedBlobs(skip int, outcome string) []string {
	seen := map[string]bool{}
	var out []string
	for _, e := range s.d.mirrorEntries(skip) {
		if e.Kind == "blob" && strings.HasPrefix(e.Outcome, outcome) && !seen[e.Ref] {
			seen[e.Ref] = true
			out = append(out, e.Ref)
		}
	}
	return out
}

// mirrorRoot runs scripts/script --mirror mirrorURL with args into a fresh
// root (--root), as a node runs it, and returns the root. The mirror tests
// configure each client only from what the script wrote there.
func mirrorRoot(t *testing.T, script, mirrorURL string, args ...string) *nodeRoot {
	t.Helper()
	n := newNodeRoot(t, nil)
	if r := n.runFile(t, script, append([]string{"--mirror", mirrorURL}, args...)...); r.code != 0 {
		t.Fatalf("%s --mirror %s %s: %s", script, mirrorURL, strings.Join(args, " "), r)
	}
	return n
}

// path is the file name under the root of a path on the node.
func (n *nodeRoot) path(name string) string { return filepath.Join(n.dir, name) }

func writeConfig(t *testing.T, file, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}
