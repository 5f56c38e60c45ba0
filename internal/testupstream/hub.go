package testupstream

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"sync"
	"time"
)

// Hub mode (WithHub) plays Docker Hub on the one TLS listener. The request's
// Host header, without its port, picks the role:
//
//   - Host's name ("registry.test"): the registry API behind bearer tokens,
//     where a blob GET is redirected to the CDN;
//   - "auth.test": the token server (https://distribution.github.io/distribution/spec/auth/token/);
//   - "cdn.test": the blob CDN, which needs no credentials.
//
// Any other name is answered 421 Misdirected Request (RFC 9110, 15.5.20).
const (
	authName = "auth.test"
	cdnName  = "cdn.test"
)

// HubUser and HubPassword are the one account of the hub's token server.
// Its tokens may pull repositories under "private/" as well as "public/";
// anonymous tokens may pull only "public/" and "library/".
const (
	HubUser     = "puller"
	HubPassword = "s3cret-pw"
)

// tokenTTL is how long a token is valid, as Docker Hub's expires_in says.
const tokenTTL = 300 * time.Second

// role is the part a request's host plays. It is set in the request context
// in hub mode only, so that Kind and the faults can tell the hosts apart.
type role int

const (
	rolePlain    role = iota // not hub mode: every name is the registry
	roleRegistry             // hub mode, Host
	roleAuth                 // hub mode, auth.test
	roleCDN                  // hub mode, cdn.test
	roleUnknown              // hub mode, a name the hub does not serve
)

type roleKey struct{}

func roleOf(r *http.Request) role {
	ro, _ := r.Context().Value(roleKey{}).(role)
	return ro
}

// WithHub turns on hub mode: Host needs bearer tokens from AuthHost, and
// blob GETs on Host answer 307 to a signed-looking URL on CDNHost. Push and
// PushIndex keep working (see pushHeader). Host must keep a name other than
// "auth.test" and "cdn.test".
func WithHub() Option {
	return func(c *config) { c.hub = true }
}

// AuthHost returns "auth.test:PORT", the hub's token server.
func (u *Upstream) AuthHost() string { return net.JoinHostPort(authName, u.Port) }

// CDNHost returns "cdn.test:PORT", the hub's blob CDN.
func (u *Upstream) CDNHost() string { return net.JoinHostPort(cdnName, u.Port) }

// Resolves returns one mapping in the form of regproxy's --resolve flag for
// every name the fixture serves: Host, AuthHost and CDNHost in hub mode,
// only Host (Resolve) otherwise.
func (u *Upstream) Resolves() []string {
	if u.hub == nil {
		return []string{u.Resolve()}
	}
	return []string{u.Resolve(), u.AuthHost() + "=" + u.Addr, u.CDNHost() + "=" + u.Addr}
}

// hub holds the state of hub mode. Its handlers wrap the plain registry.
type hub struct {
	registryName string       // Host without its port
	realm        string       // "https://auth.test:PORT/token"
	cdnHost      string       // "cdn.test:PORT"
	pushKey      string       // the value of pushHeader that grants push
	inner        http.Handler // the plain registry
	auth, cdn    *http.ServeMux

	mu     sync.Mutex       // guards tokens
	tokens map[string]grant // token → what it may do
}

func newHub(u *Upstream, registryName string) *hub {
	h := &hub{
		registryName: registryName,
		realm:        "https://" + u.AuthHost() + "/token",
		cdnHost:      u.CDNHost(),
		pushKey:      rand.Text(),
		inner:        u.registry,
		auth:         http.NewServeMux(),
		cdn:          http.NewServeMux(),
		tokens:       map[string]grant{},
	}
	h.auth.HandleFunc("GET /token", h.getToken)
	h.auth.HandleFunc("POST /token", h.postToken)
	h.cdn.HandleFunc("GET /blobs/{digest}", h.serveCDN) // GET patterns match HEAD too
	return h
}

// route returns the role of r's host and the handler that serves it.
func (h *hub) route(r *http.Request) (role, http.Handler) {
	switch hostName(r.Host) {
	case h.registryName:
		return roleRegistry, http.HandlerFunc(h.serveRegistry)
	case authName:
		return roleAuth, h.auth
	case cdnName:
		return roleCDN, h.cdn
	}
	return roleUnknown, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "testupstream hub does not serve "+r.Host, http.StatusMisdirectedRequest)
	})
}

// serveRegistry checks the bearer token, then redirects blob GETs to the
// CDN and passes everything else to the plain registry.
func (h *hub) serveRegistry(w http.ResponseWriter, r *http.Request) {
	if !h.authorize(w, r) {
		return
	}
	if r.Method == http.MethodGet && pathKind(r.URL.Path) == "blob" {
		h.redirectBlob(w, r)
		return
	}
	h.inner.ServeHTTP(w, r)
}

// redirectBlob answers a blob GET like Docker Hub: 307 to a CDN URL whose
// query differs on every redirect, as a signed URL would. A blob the
// registry does not hold gets the registry's own 404 instead.
func (h *hub) redirectBlob(w http.ResponseWriter, r *http.Request) {
	head := r.Clone(r.Context())
	head.Method = http.MethodHead
	head.Header.Del("Range")
	rec := httptest.NewRecorder()
	h.inner.ServeHTTP(rec, head)
	if rec.Code != http.StatusOK {
		h.inner.ServeHTTP(w, r)
		return
	}
	loc := fmt.Sprintf("https://%s/blobs/%s?sig=%s&expires=%d",
		h.cdnHost, path.Base(r.URL.Path), rand.Text(), time.Now().Add(10*time.Minute).Unix())
	http.Redirect(w, r, loc, http.StatusTemporaryRedirect)
}

// repoScope returns the token scope a registry request needs
// ("repository:NAME:pull" or "repository:NAME:pull,push"), or "" for
// requests that name no repository, like /v2/, which any valid token may
// make.
func repoScope(r *http.Request) string {
	name := repoName(r.URL.Path)
	if name == "" {
		return ""
	}
	actions := "pull"
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		actions = "pull,push"
	}
	return "repository:" + name + ":" + actions
}

// repoName returns the repository of an OCI distribution path, or "" if it
// names none. Names may hold slashes, so the known suffix is cut off.
func repoName(p string) string {
	drop := map[string]int{"blob": 2, "manifest": 2, "tags": 2}[pathKind(p)]
	if pathKind(p) == "upload" {
		drop = 2 // .../blobs/uploads
		if !strings.HasSuffix(strings.TrimSuffix(p, "/"), "/uploads") {
			drop = 3 // .../blobs/uploads/<id>
		}
	}
	if drop == 0 {
		return ""
	}
	el := strings.Split(strings.TrimPrefix(strings.TrimSuffix(p, "/"), "/v2/"), "/")
	return strings.Join(el[:len(el)-drop], "/")
}
