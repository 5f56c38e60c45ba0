package proxy

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// bcryptHash hashes password at cost and gives it the prefix wanted
// ($2a$, $2b$ or $2y$: the same algorithm under three names).
func bcryptHash(t *testing.T, password string, cost int, prefix string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		t.Fatal(err)
	}
	return prefix + strings.TrimPrefix(string(h), "$2a$")
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestLoadHtpasswdLines: bcrypt entries under all three prefixes are used;
// every other kind of line is left out with a warning that names the line
// and the user but never the hash, and that user cannot log in. Blank lines
// and comments pass silently.
func TestLoadHtpasswdLines(t *testing.T) {
	t.Parallel()
	good := bcryptHash(t, "pw", bcrypt.MinCost, "$2y$")
	lines := []struct {
		line     string
		user     string // who logs in with "pw", or "" if nobody does
		warnings string // what the line's warning says; "" for none
	}{
		{"# users of the proxy port", "", ""},
		{"", "", ""},
		{"yuki:" + good, "yuki", ""},
		{"anna:" + bcryptHash(t, "pw", bcrypt.MinCost, "$2a$"), "anna", ""},
		{"  bert:" + bcryptHash(t, "pw", bcrypt.MinCost, "$2b$") + "\r", "bert", ""},
		{"md5:$apr1$0hOTwS2J$2eu2QHXSRHE0R9WFh/tA0.", "", "user=md5 reason=\"MD5 ($apr1$) hash"},
		{"sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "", "user=sha reason=\"SHA-1 ({SHA}) hash"},
		{"crypt:rqXexS6ZhobKA", "", "user=crypt reason=\"crypt or plain text hash"},
		{"plain:pw", "", "user=plain reason=\"crypt or plain text hash"},
		{"md5crypt:$1$abcdefgh$0123456789012345678901", "", "user=md5crypt reason=\"MD5-crypt"},
		{"sha512:$6$salt$" + strings.Repeat("x", 86), "", "user=sha512 reason=\"SHA-crypt"},
		{"short:" + good[:59], "", "user=short reason=\"malformed bcrypt hash"},
		{"long:" + good + "x", "", "user=long reason=\"malformed bcrypt hash"},
		{"2x:$2x$" + good[4:], "", "user=2x reason=\"crypt or plain text hash"},
		{"yuki:" + bcryptHash(t, "other", bcrypt.MinCost, "$2y$"), "", "user=yuki reason=\"user named on an earlier line"},
		{"no-colon-here", "", "reason=\"not USER:HASH\""},
		{":" + good, "", "reason=\"not USER:HASH\""},
	}
	var content strings.Builder
	for _, l := range lines {
		content.WriteString(l.line + "\n")
	}
	var log bytes.Buffer
	h, err := LoadHtpasswd(writeFile(t, content.String()), slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	a := newClientAuth(h, time.Now)
	for i, l := range lines {
		user, _, _ := strings.Cut(strings.TrimSpace(l.line), ":")
		t.Run("line "+strconv.Itoa(i+1)+" "+user, func(t *testing.T) {
			n := "line=" + strconv.Itoa(i+1) + " "
			warning := lineOf(log.String(), n)
			switch {
			case l.warnings == "" && warning != "":
				t.Errorf("unexpected warning: %s", warning)
			case l.warnings != "" && !strings.Contains(warning, l.warnings):
				t.Errorf("warning %q; want one with %q", warning, l.warnings)
			}
			if _, hash, ok := strings.Cut(l.line, ":"); ok && len(hash) > 8 && strings.Contains(log.String(), strings.TrimSpace(hash)) {
				t.Errorf("the log shows the hash of line %d", i+1)
			}
			if l.user != "" {
				if user, ok := a.check(context.Background(), basicAuth(l.user, "pw")); !ok || user != l.user {
					t.Errorf("%s with the right password: %q, %v; want let in", l.user, user, ok)
				}
			}
		})
	}
	if got, want := h.Len(), 3; got != want {
		t.Errorf("%d users; want %d", got, want)
	}
	for _, user := range []string{"md5", "sha", "plain", "short", "long"} {
		if _, ok := a.check(context.Background(), basicAuth(user, "pw")); ok {
			t.Errorf("%s, whose line was skipped, was let in", user)
		}
	}
}

// lineOf is the line of log that contains s, or "".
func lineOf(log, s string) string {
	for l := range strings.Lines(log) {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

func basicAuth(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// TestLoadHtpasswdRefuses: a file that cannot be read, or that would let
// nobody in, is an error, with one line that names the first skipped line
// and never a hash; nothing is logged for it.
func TestLoadHtpasswdRefuses(t *testing.T) {
	t.Parallel()
	md5 := "$apr1$0hOTwS2J$2eu2QHXSRHE0R9WFh/tA0."
	for _, tc := range []struct {
		name, file string
		want       string
	}{
		{"missing file", filepath.Join(t.TempDir(), "absent"), "no such file"},
		{"a directory", t.TempDir(), "is a directory"},
		{"empty file", writeFile(t, ""), "holds no user"},
		{"comments only", writeFile(t, "# nobody yet\n\n"), "holds no user"},
		{"MD5 only", writeFile(t, "# team\nbob:"+md5+"\n"), `holds no usable entry (1 skipped; line 2, user "bob": MD5 ($apr1$) hash`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log bytes.Buffer
			_, err := LoadHtpasswd(tc.file, slog.New(slog.NewTextHandler(&log, nil)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v; want one with %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), md5) {
				t.Errorf("error %q: want one line without the hash", err)
			}
			if log.Len() != 0 {
				t.Errorf("logged for a file that is refused:\n%s", &log)
			}
		})
	}
}

// countingCompare is bcrypt's compare, counting its runs and recording
// the cost of the hashes it was given.
type countingCompare struct {
	mu    sync.Mutex // protects runs and costs
	runs  int
	costs []int
}

func (c *countingCompare) compare(hash, password []byte) error {
	cost, _ := bcrypt.Cost(hash)
	c.mu.Lock()
	c.runs++
	c.costs = append(c.costs, cost)
	c.mu.Unlock()
	return bcrypt.CompareHashAndPassword(hash, password)
}

// TestLoginCache: a header that verified is trusted for loginTTL without
// bcrypt; a failed one runs bcrypt every time (never cached as a success);
// an unknown user runs bcrypt too, on a hash as costly as the dearest real
// one, so that its timing does not reveal which users exist.
func TestLoginCache(t *testing.T) {
	t.Parallel()
	content := "cheap:" + bcryptHash(t, "pw", bcrypt.MinCost, "$2y$") + "\n" +
		"dear:" + bcryptHash(t, "pw", bcrypt.MinCost+1, "$2y$") + "\n"
	h, err := LoadHtpasswd(writeFile(t, content), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	clk := struct {
		sync.Mutex
		now time.Time
	}{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	now := func() time.Time { clk.Lock(); defer clk.Unlock(); return clk.now }
	a := newClientAuth(h, now)
	cc := &countingCompare{}
	a.compare = cc.compare
	for _, step := range []struct {
		name     string
		header   string
		advance  time.Duration
		wantOK   bool
		wantRuns int // bcrypt runs so far
		wantCost int // cost of the last hash compared; 0: not checked
	}{
		{"first login", basicAuth("cheap", "pw"), 0, true, 1, bcrypt.MinCost},
		{"same header again", basicAuth("cheap", "pw"), 0, true, 1, 0},
		{"same header just before the TTL ends", basicAuth("cheap", "pw"), loginTTL - time.Second, true, 1, 0},
		{"wrong password", basicAuth("cheap", "wrong"), 0, false, 2, 0},
		{"wrong password again", basicAuth("cheap", "wrong"), 0, false, 3, 0},
		{"unknown user", basicAuth("nobody", "pw"), 0, false, 4, bcrypt.MinCost + 1},
		{"unknown user again", basicAuth("nobody", "pw"), 0, false, 5, bcrypt.MinCost + 1},
		{"no header", "", 0, false, 5, 0},
		{"malformed header", "Basic !!!", 0, false, 5, 0},
		{"after the TTL", basicAuth("cheap", "pw"), time.Second, true, 6, 0},
	} {
		// The steps build on each other: run in order, not in parallel.
		t.Run(step.name, func(t *testing.T) {
			clk.Lock()
			clk.now = clk.now.Add(step.advance)
			clk.Unlock()
			user, ok := a.check(context.Background(), step.header)
			if ok != step.wantOK || (ok && user != "cheap") {
				t.Errorf("got %q, %v; want ok %v", user, ok, step.wantOK)
			}
			if cc.runs != step.wantRuns {
				t.Errorf("%d bcrypt runs so far; want %d", cc.runs, step.wantRuns)
			}
			if step.wantCost != 0 && cc.costs[len(cc.costs)-1] != step.wantCost {
				t.Errorf("compared a hash of cost %d; want %d", cc.costs[len(cc.costs)-1], step.wantCost)
			}
		})
	}
}
