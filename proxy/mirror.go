package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
)

// The registry-mirror front end. Nodes that will not trust regproxy's CA
// configure it as a registry mirror instead: dockerd's registry-mirrors,
// containerd's hosts.toml, a registries.conf mirror (podman, CRI-O). They
// send the registry API to the mirror port itself, over plain HTTP or TLS,
// and name the upstream registry in each request (parseMirror says how).
//
// The mirror maps each request onto the request an intercepted connection
// to that registry would carry (mirrorRoute.request) and hands it to the
// handler of intercepted connections, serveRegistry: one cache, one set of
// fills, the same access rules, credentials, rate limits and access log
// (whose lines say front=mirror). A blob cached through one front end is
// a hit through the other. What the mirror does differently:
//
//   - It answers the /v2/ ping itself, 200 and no challenge. The ping
//     often names no registry (dockerd and podman send a bare /v2/), and
//     the mirror is the registry these clients speak to.
//   - It signs in upstream for clients that bring no Authorization, as
//     regproxy's own probes do (mirrorTransport). A challenged client would
//     have to fetch a token from the realm the challenge names, upstream's
//     token host, which nodes behind a mirror often cannot reach, and for
//     a scope named as the client names the repository ("quay.io/org/app"
//     under a path prefix), which that token host does not know.
//   - Only GET and HEAD are served: the mirror is read-only. Pushes and
//     deletes go to the registry itself.
//   - It does not list repositories (/v2/_catalog): what the cache holds
//     is what other clients pulled.
//
// The mirror port asks for no credentials (--htpasswd covers the proxy
// port): whoever reaches it pulls what upstream serves anyone, and what
// the configured credentials can read. A private repository is served
// only to a client that proves access with its own Authorization, by the
// rules of access, as on intercepted connections.

// mirror is the mirror port's server and what it says about itself.
type mirror struct {
	srv *http.Server
	// registry serves requests mapped onto their upstream: serveRegistry
	// behind the access log, as on intercepted connections.
	registry http.Handler
	// local serves what the mirror answers itself, behind the access log.
	local http.Handler
	// registries is the allow-list as configured, for refusals to name.
	registries string
}

// Fronts, as the access log's front field names them.
const (
	frontProxy  = "proxy"  // the proxy port and the connections it intercepts
	frontMirror = "mirror" // the mirror port
)

type frontKey struct{}

// frontOf names the front end that received the request of ctx, or that
// started the fill of ctx.
func frontOf(ctx context.Context) string {
	if f, ok := ctx.Value(frontKey{}).(string); ok {
		return f
	}
	return frontProxy
}

// withTarget records the upstream registry a request is for (targetOf).
func withTarget(ctx context.Context, target string) context.Context {
	return context.WithValue(ctx, targetKey{}, target)
}

func (p *Proxy) newMirror(registries []string) *mirror {
	m := &mirror{
		registry:   p.accessLog(http.HandlerFunc(p.serveRegistry)),
		local:      p.accessLog(http.HandlerFunc(p.serveMirrorLocal)),
		registries: strings.Join(registries, " "),
	}
	m.srv = &http.Server{
		Handler:           p.handlers.track(http.HandlerFunc(p.serveMirror)),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		// Each connection remembers its client's credential hash, as an
		// intercepted one does (credCache), and is the mirror's.
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return withCredCache(context.WithValue(ctx, frontKey{}, frontMirror))
		},
	}
	return m
}

// ServeMirror serves the registry-mirror front end on ln, over plain HTTP,
// or HTTPS when ln is a TLS listener (tls.NewListener), until Shutdown or
// Close, and then returns nil. It shares the cache and everything else
// with the proxy port that Serve serves; Shutdown stops both. Call it at
// most once.
func (p *Proxy) ServeMirror(ln net.Listener) error {
	p.dial.serving(ln.Addr()) // a tunnel or a fill must not loop back to it either
	return serveErr(p.mirror.srv.Serve(ln))
}

// serveMirror routes a request to the mirror port: to the registry
// handler once mapped onto its upstream, or to what the mirror answers
// itself.
func (p *Proxy) serveMirror(w http.ResponseWriter, r *http.Request) {
	m, err := parseMirror(r)
	if err != nil {
		p.answerMirror(w, r, err)
		return
	}
	mapped := m.request(r)
	if err := p.mirrorRefusal(mapped, m); err != nil {
		p.answerMirror(w, mapped, err)
		return
	}
	if isPing(mapped) {
		if m.prefix == "" && !m.ns {
			// A bare /v2/ names no registry (dockerd and podman send one
			// whatever they pull next): it is the mirror's, in the log too.
			mapped = r
		}
		p.answerMirror(w, mapped, nil)
		return
	}
	if m.prefix != "" || m.ns {
		if kind, _, _ := describePath(mapped); kind == logTags {
			w = &linkWriter{ResponseWriter: w, route: m}
		}
	}
	p.mirror.registry.ServeHTTP(w, mapped)
}

// answerMirror answers r on the mirror's own: with err, or the ping's
// answer for a nil err.
func (p *Proxy) answerMirror(w http.ResponseWriter, r *http.Request, err error) {
	p.mirror.local.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), mirrorAnswerKey{}, &err)))
}

// mirrorRefusal returns the error a mapped request is refused with, or
// nil: writes, the catalog, and registries not on the allow-list.
func (p *Proxy) mirrorRefusal(r *http.Request, m mirrorRoute) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return &regError{Status: http.StatusMethodNotAllowed, Code: "UNSUPPORTED",
			Message: "the regproxy mirror is read-only: push to and delete from the registry itself"}
	}
	if isPing(r) {
		return nil
	}
	if strings.TrimSuffix(r.URL.Path, "/") == "/v2/_catalog" {
		return &regError{Status: http.StatusNotFound, Code: "UNSUPPORTED",
			Message: "the regproxy mirror does not list repositories"}
	}
	if !p.allow.Intercepts(m.target) {
		return &regError{Status: http.StatusForbidden, Code: "DENIED",
			Message: fmt.Sprintf("regproxy mirrors only the registries on its --registries list (%s); %s is not on it",
				p.mirror.registries, m.registry)}
	}
	return nil
}

// mirrorAnswerKey holds, for serveMirrorLocal, a *error: what to answer.
type mirrorAnswerKey struct{}

// serveMirrorLocal answers what the mirror answers itself: the ping, or a
// refusal in the OCI error format.
func (p *Proxy) serveMirrorLocal(w http.ResponseWriter, r *http.Request) {
	describe(r)
	var err error
	if e, ok := r.Context().Value(mirrorAnswerKey{}).(*error); ok {
		err = *e
	}
	if err != nil {
		setOutcome(r, outcomeDenied)
		if re := (*regError)(nil); errors.As(err, &re) && re.Status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", "GET, HEAD")
		}
		writeError(w, err)
		return
	}
	setOutcome(r, outcomeLocal)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.Header().Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write([]byte("{}"))
	}
}

// linkWriter rewrites the Link header of a tag list for the client that
// asked the mirror (mirrorRoute.clientLink), so that it pages through the
// mirror, as it asked.
type linkWriter struct {
	http.ResponseWriter
	route       mirrorRoute
	wroteHeader bool
}

func (w *linkWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.wroteHeader = true
		links := w.Header()["Link"]
		for i, l := range links {
			links[i] = w.route.clientLink(l)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *linkWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK) // what net/http does for a body without a status
	}
	return w.ResponseWriter.Write(b)
}

// Flush passes through, for streamed pass-through responses.
func (w *linkWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach Flush.
func (w *linkWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// mirrorTransport sends the upstream requests made for mirror clients
// through signIn, and all others through next. signIn is regproxy's own
// sign-in (the probe's transport: configured credentials, else an
// anonymous token), which leaves alone every request that is not a pull or
// that brings the client's own Authorization. The front end is read from
// the request's context, which fills inherit from the request that started
// them.
type mirrorTransport struct {
	next, signIn http.RoundTripper
}

var _ http.RoundTripper = mirrorTransport{}

func (t mirrorTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if frontOf(req.Context()) == frontMirror {
		return t.signIn.RoundTrip(req)
	}
	return t.next.RoundTrip(req)
}
