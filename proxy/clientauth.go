package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/crypto/bcrypt"
)

// This file holds client authentication on the proxy port (--htpasswd):
// who the users are (the bcrypt entries of an htpasswd file), how a
// Proxy-Authorization header is checked, and the short cache that keeps
// bcrypt off the path of every CONNECT. connect.go asks it about every
// CONNECT and proxy request; the plain pages (plain.go) never ask.
//
// Requests inside an intercepted connection carry no Proxy-Authorization
// (clients send it on the CONNECT alone), so the CONNECT is where a client
// is let in: the registry server is fed only by connections whose CONNECT
// passed.

// Htpasswd is the set of users that may use the proxy port: the bcrypt
// entries of an htpasswd file, as `htpasswd -B` writes them.
type Htpasswd struct {
	hashes map[string][]byte // user → bcrypt hash
	// dummy is the bcrypt hash of a random password, at the highest cost
	// of hashes: a user not in the file is checked against it, so that a
	// wrong user name takes as long as a wrong password.
	dummy []byte
}

// Len is the number of users who can log in; 0 for a nil Htpasswd.
func (h *Htpasswd) Len() int {
	if h == nil {
		return 0
	}
	return len(h.hashes)
}

// LoadHtpasswd reads an htpasswd file. Blank lines and # comments are
// skipped. Only bcrypt entries ($2a$, $2b$, $2y$) are used, as in the
// distribution registry; any other line (MD5 $apr1$, {SHA}, crypt, plain
// text, a malformed line, a user named twice) is left out with a warning
// on log naming the line number and the user, never the hash, and that
// user cannot log in. It fails if the file cannot be read or holds no
// usable entry, since that would lock every client out.
func LoadHtpasswd(file string, log *slog.Logger) (*Htpasswd, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h, skipped, err := parseHtpasswd(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if h.Len() == 0 {
		return nil, noEntryError(file, skipped)
	}
	for _, s := range skipped {
		log.Warn("htpasswd entry not used: that user cannot log in", s.attrs(file)...)
	}
	return h, nil
}

// skippedLine is a line of an htpasswd file that yields no user.
type skippedLine struct {
	line   int
	user   string // "" when the line names none
	reason string // never holds the hash
}

func (s skippedLine) attrs(file string) []any {
	attrs := []any{"file", file, "line", s.line}
	if s.user != "" {
		attrs = append(attrs, "user", s.user)
	}
	return append(attrs, "reason", s.reason)
}

// noEntryError says why a file gave no user, in one line: the first line
// skipped stands for the rest.
func noEntryError(file string, skipped []skippedLine) error {
	if len(skipped) == 0 {
		return fmt.Errorf("%s holds no user; add one with htpasswd -B", file)
	}
	s := skipped[0]
	return fmt.Errorf("%s holds no usable entry (%d skipped; line %d, user %q: %s); every client would be refused",
		file, len(skipped), s.line, s.user, s.reason)
}

// parseHtpasswd reads the users of an htpasswd file and the lines it
// skipped; the dummy hash is made at the highest cost found.
func parseHtpasswd(r io.Reader) (*Htpasswd, []skippedLine, error) {
	h := &Htpasswd{hashes: map[string][]byte{}}
	var skipped []skippedLine
	maxCost := bcrypt.MinCost
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		user, hash, reason := parseHtpasswdLine(sc.Text())
		switch {
		case reason != "":
			skipped = append(skipped, skippedLine{n, user, reason})
		case user == "": // blank or comment
		case h.hashes[user] != nil:
			// Apache's htpasswd lookup stops at the first match.
			skipped = append(skipped, skippedLine{n, user, "user named on an earlier line, which is used"})
		default:
			h.hashes[user] = hash
			cost, _ := bcrypt.Cost(hash) // checked by parseHtpasswdLine
			maxCost = max(maxCost, cost)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	var err error
	h.dummy, err = bcrypt.GenerateFromPassword([]byte(rand.Text()), maxCost)
	return h, skipped, err
}

// parseHtpasswdLine reads USER:HASH. A blank or comment line gives all
// empty; a line that cannot be used gives a reason, which never quotes
// the hash.
func parseHtpasswdLine(line string) (user string, hash []byte, reason string) {
	line = strings.TrimSpace(line)
	if line == "" || strings.HasPrefix(line, "#") {
		return "", nil, ""
	}
	user, h, ok := strings.Cut(line, ":")
	if !ok || user == "" {
		return "", nil, "not USER:HASH"
	}
	if reason := notBcrypt(h); reason != "" {
		return user, nil, reason
	}
	return user, []byte(h), ""
}

// notBcrypt names the kind of a hash that is not usable bcrypt, or
// returns "" for a bcrypt hash.
func notBcrypt(h string) string {
	kind := "crypt or plain text"
	switch {
	case strings.HasPrefix(h, "$2a$"), strings.HasPrefix(h, "$2b$"), strings.HasPrefix(h, "$2y$"):
		// A bcrypt hash is exactly 60 characters; bcrypt.Cost would
		// ignore anything after them.
		if _, err := bcrypt.Cost([]byte(h)); err != nil || len(h) != 60 {
			return "malformed bcrypt hash"
		}
		return ""
	case strings.HasPrefix(h, "$apr1$"):
		kind = "MD5 ($apr1$)"
	case strings.HasPrefix(h, "{SHA}"):
		kind = "SHA-1 ({SHA})"
	case strings.HasPrefix(h, "$1$"):
		kind = "MD5-crypt ($1$)"
	case strings.HasPrefix(h, "$5$"), strings.HasPrefix(h, "$6$"):
		kind = "SHA-crypt"
	}
	return kind + " hash; only bcrypt is accepted (htpasswd -B)"
}

// Login cache bounds. A verified header is trusted for loginTTL without
// bcrypt; the cache holds at most loginCacheSize of them, so clients that
// send ever new headers cannot grow it.
const (
	loginTTL       = time.Minute
	loginCacheSize = 1024
)

// clientAuth checks the Proxy-Authorization of requests on the proxy port.
type clientAuth struct {
	users   *Htpasswd
	now     func() time.Time
	compare func(hash, password []byte) error // bcrypt.CompareHashAndPassword; tests count calls
	// slots bounds the bcrypt runs at a time, so that a flood of wrong
	// passwords costs at most that many cores; logins in the cache never
	// wait for a slot.
	slots chan struct{}
	// logins holds headers that verified, keyed by their SHA-256: never a
	// failed attempt.
	logins *lru.Cache[[sha256.Size]byte, login]
}

// login is a verified header's user, and when it must be checked again.
type login struct {
	user    string
	expires time.Time
}

func newClientAuth(users *Htpasswd, now func() time.Time) *clientAuth {
	logins, _ := lru.New[[sha256.Size]byte, login](loginCacheSize) // fails only for a size <= 0
	return &clientAuth{users: users, now: now, compare: bcrypt.CompareHashAndPassword,
		slots: make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2)), logins: logins}
}

// check returns the user whose name and password the Proxy-Authorization
// header value holds (RFC 9110, section 11.7.2; Basic, RFC 7617), or
// false. A header seen to verify within loginTTL is not run through bcrypt
// again.
func (a *clientAuth) check(ctx context.Context, header string) (string, bool) {
	if header == "" {
		return "", false // nothing to check: the 407 asks for credentials
	}
	key := sha256.Sum256([]byte(header))
	if user, ok := a.cached(key); ok {
		return user, true
	}
	user, password, ok := parseBasic(header)
	if !ok {
		return "", false
	}
	select {
	case a.slots <- struct{}{}:
		defer func() { <-a.slots }()
	case <-ctx.Done():
		return "", false
	}
	// Another request with the same header may have verified it while
	// this one waited for a slot.
	if user, ok := a.cached(key); ok {
		return user, true
	}
	if !a.verify(user, password) {
		return "", false
	}
	a.logins.Add(key, login{user: user, expires: a.now().Add(loginTTL)})
	return user, true
}

// cached returns the user of a header that verified within loginTTL.
func (a *clientAuth) cached(key [sha256.Size]byte) (string, bool) {
	l, ok := a.logins.Get(key)
	if !ok || !a.now().Before(l.expires) {
		return "", false
	}
	return l.user, true
}

// verify runs bcrypt on the password. bcrypt compares in constant time;
// an unknown user is compared with the dummy hash, so that the time taken
// does not tell which user names exist.
func (a *clientAuth) verify(user, password string) bool {
	hash, known := a.users.hashes[user]
	if !known {
		hash = a.users.dummy
	}
	err := a.compare(hash, []byte(password))
	return known && err == nil
}

// parseBasic reads the user and password of a Basic credential. The
// scheme is case-insensitive (RFC 9110, section 11.1); a user-id holds no
// colon (RFC 7617, section 2), so the first one splits.
func parseBasic(header string) (user, password string, ok bool) {
	scheme, b64, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
	if err != nil {
		return "", "", false
	}
	return strings.Cut(string(raw), ":")
}

// authRealm is the protection space of the 407 challenge.
const authRealm = "regproxy"

type userKey struct{}

// authenticate lets r through the proxy port: always without --htpasswd,
// otherwise only if its Proxy-Authorization holds a user and password of
// the file. The returned request carries the user, for the access log.
func (p *Proxy) authenticate(r *http.Request) (*http.Request, bool) {
	if p.auth == nil {
		return r, true
	}
	user, ok := p.auth.check(r.Context(), r.Header.Get("Proxy-Authorization"))
	if !ok {
		return r, false
	}
	return r.WithContext(withUser(r.Context(), user)), true
}

// withUser records the authenticated user of a connection or request.
func withUser(ctx context.Context, user string) context.Context {
	return context.WithValue(ctx, userKey{}, user)
}

// userOf is the authenticated user of r, or "" without --htpasswd.
func userOf(r *http.Request) string {
	u, _ := r.Context().Value(userKey{}).(string)
	return u
}

// challenge is the 407 that asks a client for proxy credentials (RFC
// 9110, sections 11.7.1 and 15.5.8). The connection is closed after it:
// a client that has credentials retries on a new one.
func challenge(r *http.Request) *http.Response {
	const msg = "regproxy: proxy authentication required (Proxy-Authorization: Basic)\n"
	return &http.Response{
		StatusCode: http.StatusProxyAuthRequired, ProtoMajor: 1, ProtoMinor: 1, Close: true, Request: r,
		Header: http.Header{
			"Proxy-Authenticate": {`Basic realm="` + authRealm + `"`},
			"Content-Type":       {"text/plain; charset=utf-8"},
		},
		Body: io.NopCloser(strings.NewReader(msg)), ContentLength: int64(len(msg)),
	}
}
