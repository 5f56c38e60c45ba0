package proxy

import (
	"fmt"
	"net/http"
)

// servePlain answers plain HTTP requests on the proxy port: the CA for
// nodes to trust, a health check, the metrics, and a short description.
//
// These pages ask for no credentials, even under --htpasswd: nodes fetch
// the CA before they are configured, health checks and Prometheus scrapes
// carry none, and none of them reveals a secret (the CA certificate is
// public by design). /metrics tells whoever reaches the port how much
// traffic each allow-listed registry sees, and nothing finer: its labels
// never name a repository, tag, client or user (package metrics).
func (p *Proxy) servePlain(w http.ResponseWriter, r *http.Request) {
	setOutcome(r, outcomeLocal)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch r.URL.Path {
	case "/ca.crt":
		w.Header().Set("Content-Type", "application/x-x509-ca-cert")
		w.Write(p.ca.CertPEM())
	case "/healthz":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	case "/metrics":
		p.metrics.Handler().ServeHTTP(w, r)
	case "/":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		proxy := r.Host
		if p.auth != nil {
			proxy = "USER:PASSWORD@" + proxy // a placeholder: the page knows no user
		}
		fmt.Fprintf(w, indexText, r.Host, proxy)
	default:
		http.NotFound(w, r)
	}
}

const indexText = `regproxy: a caching HTTPS proxy for container registries.

Allow-listed registries are intercepted and their blobs and manifests
served from a shared cache; every other CONNECT is tunnelled untouched.

On each node:
  curl -fsS http://%s/ca.crt -o /usr/local/share/ca-certificates/regproxy.crt && update-ca-certificates
  export HTTPS_PROXY=http://%s   # dockerd/containerd: a systemd drop-in; enroot: https_proxy in enroot.conf
`
