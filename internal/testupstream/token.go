package testupstream

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// pushHeader marks the fixture's own requests (Push and PushIndex in hub
// mode). The token server grants a request that carries it with the hub's
// secret pushKey every action it asks for on any repository, push included.
// Only the fixture's private push transport sends it; Transport and Client
// do not, so tests see the hub as an anonymous client would.
const pushHeader = "Testupstream-Push-Key"

// identity is who asked the token server for a token.
type identity int

const (
	anonymous identity = iota
	hubUser            // Basic auth of HubUser and HubPassword
	pusher             // the fixture itself, by pushHeader
)

// grant is what a token may do until it expires.
type grant struct {
	scopes  map[string]bool // "repository:NAME:ACTION" → true
	expires time.Time
}

// allows reports whether g holds every action of scope
// ("repository:NAME:pull,push"); the empty scope needs only a valid token.
func (g grant) allows(scope string) bool {
	if scope == "" {
		return true
	}
	i := strings.LastIndexByte(scope, ':')
	for a := range strings.SplitSeq(scope[i+1:], ",") {
		if !g.scopes[scope[:i+1]+a] {
			return false
		}
	}
	return true
}

// authorize checks r's bearer token against the scope r needs. On failure
// it writes Docker Hub's 401 and returns false. The challenge (RFC 6750,
// section 3) names the realm, service and scope a client must ask for, plus
// error="invalid_token" for an unknown or expired token and
// error="insufficient_scope" for a token that lacks the scope.
func (h *hub) authorize(w http.ResponseWriter, r *http.Request) bool {
	scope := repoScope(r)
	var errParam string
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		g, found := h.lookup(tok)
		switch {
		case !found:
			errParam = "invalid_token"
		case !g.allows(scope):
			errParam = "insufficient_scope"
		default:
			return true
		}
	}
	challenge := fmt.Sprintf("Bearer realm=%q,service=%q", h.realm, h.registryName)
	if scope != "" {
		challenge += fmt.Sprintf(",scope=%q", scope)
	}
	if errParam != "" {
		challenge += fmt.Sprintf(",error=%q", errParam)
	}
	w.Header().Set("WWW-Authenticate", challenge)
	writeError(w, http.StatusUnauthorized, "UNAUTHORIZED")
	return false
}

func (h *hub) lookup(tok string) (grant, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	g, ok := h.tokens[tok]
	return g, ok && time.Now().Before(g.expires)
}

// getToken serves the token spec's GET
// (https://distribution.github.io/distribution/spec/auth/token/). Like
// Docker Hub it grants each requested action the caller may have and drops
// the rest without an error, so an anonymous pull of a private repository
// gets a token and then fails at the registry with insufficient_scope.
func (h *hub) getToken(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !h.checkService(w, q.Get("service")) {
		return
	}
	who := anonymous
	switch user, pass, ok := r.BasicAuth(); {
	case r.Header.Get(pushHeader) == h.pushKey:
		who = pusher
	case ok && user == HubUser && pass == HubPassword:
		who = hubUser
	case ok:
		writeJSON(w, http.StatusUnauthorized, map[string]string{"details": "incorrect username or password"})
		return
	}
	var scopes []string
	for _, s := range q["scope"] {
		scopes = append(scopes, strings.Fields(s)...) // a scope parameter may hold several
	}
	tok, issued := h.issue(who, scopes)
	writeJSON(w, http.StatusOK, map[string]any{
		"token":        tok,
		"access_token": tok,
		"expires_in":   int(tokenTTL.Seconds()),
		"issued_at":    issued.Format(time.RFC3339),
	})
}

// postToken serves the OAuth2 password grant of the token spec, which
// containerd tries first when it has credentials
// (https://distribution.github.io/distribution/spec/auth/oauth/). Other
// grants get 400, on which clients fall back to GET.
func (h *hub) postToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "password" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type"})
		return
	}
	if !h.checkService(w, r.PostForm.Get("service")) {
		return
	}
	if r.PostForm.Get("username") != HubUser || r.PostForm.Get("password") != HubPassword {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_grant"})
		return
	}
	scope := r.PostForm.Get("scope")
	tok, issued := h.issue(hubUser, strings.Fields(scope))
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok,
		"scope":        scope,
		"expires_in":   int(tokenTTL.Seconds()),
		"issued_at":    issued.Format(time.RFC3339),
	})
}

// checkService refuses tokens for another service, so that a client that
// mangles the challenge fails here rather than later.
func (h *hub) checkService(w http.ResponseWriter, service string) bool {
	if service == h.registryName {
		return true
	}
	writeJSON(w, http.StatusBadRequest, map[string]string{"details": fmt.Sprintf("service %q is not %q", service, h.registryName)})
	return false
}

// issue remembers a new opaque token for who with the allowed part of
// scopes, and forgets expired ones.
func (h *hub) issue(who identity, scopes []string) (string, time.Time) {
	g := grant{scopes: map[string]bool{}}
	for _, s := range scopes {
		typ, rest, _ := strings.Cut(s, ":")
		i := strings.LastIndexByte(rest, ':')
		if typ != "repository" || i < 0 {
			continue
		}
		name := rest[:i]
		for a := range strings.SplitSeq(rest[i+1:], ",") {
			if mayDo(who, name, a) {
				g.scopes["repository:"+name+":"+a] = true
			}
		}
	}
	tok, now := rand.Text(), time.Now()
	g.expires = now.Add(tokenTTL)
	h.mu.Lock()
	defer h.mu.Unlock()
	for t, old := range h.tokens {
		if now.After(old.expires) {
			delete(h.tokens, t)
		}
	}
	h.tokens[tok] = g
	return tok, now
}

// mayDo is the hub's access policy: anyone pulls "public/" and, as on
// Docker Hub, "library/" (its official images); HubUser also pulls
// "private/", and the fixture itself does anything anywhere.
func mayDo(who identity, name, action string) bool {
	switch {
	case who == pusher:
		return true
	case action != "pull":
		return false
	case strings.HasPrefix(name, "public/"), strings.HasPrefix(name, "library/"):
		return true
	}
	return who == hubUser && strings.HasPrefix(name, "private/")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}
