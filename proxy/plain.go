package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
)

// servePlain answers plain HTTP requests on the proxy port: the CA for
// nodes to trust, a health check, the metrics, and a short description,
// which a browser gets as the status page (status.go), also served as
// /status.json.
//
// These pages ask for no credentials, even under --htpasswd: nodes fetch
// the CA before they are configured, health checks and Prometheus scrapes
// carry none, and none of them reveals a secret (the CA certificate is
// public by design). /metrics tells whoever reaches the port how much
// traffic each allow-listed registry sees, and nothing finer: its labels
// never name a repository, tag, client or user (package metrics). The
// status page shows the same, and names repositories only where the
// operator asked for it (--status-repos).
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
		p.serveIndex(w, r)
	case "/status.json":
		p.serveStatusJSON(w, r)
	default:
		p.serveSetup(w, r) // /setup/*, or a 404
	}
}

// serveIndexText answers GET / for clients that do not ask for HTML.
func (p *Proxy) serveIndexText(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, p.indexHelp(r))
}

// indexHelp is the plain description, with the command that sets up a
// node for the proxy port as r reached it, which checks the CA against
// the fingerprint filled in; the status page shows it too. A Host that
// could not be a proxy address shows as PROXY:3128, as on /setup/.
func (p *Proxy) indexHelp(r *http.Request) string {
	host := r.Host
	if !servedHost.MatchString(host) {
		host = "PROXY:3128"
	}
	fp := caFingerprint(p.ca.CertPEM())
	cmd := SetupCommand(host, "docker", fp)
	if p.auth != nil {
		// A placeholder: the page knows no user.
		cmd += " --proxy http://USER:PASSWORD@" + host + "/"
	}
	return fmt.Sprintf(indexText, cmd, host, fp)
}

// SetupCommand is the one-liner that sets up client (docker, containerd,
// podman or enroot) on a node for the proxy port at hostPort, checking
// regproxy's CA against fingerprint (ca_sha256, lowercase hex).
func SetupCommand(hostPort, client, fingerprint string) string {
	return fmt.Sprintf("curl -fsS http://%s/setup/%s | sh -s -- --ca-sha256 %s", hostPort, client, fingerprint)
}

// caFingerprint is the fingerprint of the CA certificate in certPEM as
// regproxy logs it (ca_sha256): lowercase hex of the SHA-256 of the DER.
func caFingerprint(certPEM []byte) string {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return "HEX" // no certificate to take it from: the placeholder
	}
	sum := sha256.Sum256(block.Bytes)
	return hex.EncodeToString(sum[:])
}

// indexText is the plain page: the set-up command, the proxy's address,
// the CA's fingerprint. The fingerprint comes over plain HTTP with the
// page, so the page says to check it against the log.
const indexText = `regproxy: a caching HTTPS proxy for container registries.

Allow-listed registries are intercepted and their blobs and manifests
served from a shared cache; every other CONNECT is tunnelled untouched.

On each node, as root (containerd, podman or enroot in place of docker):
  %s

The script checks regproxy's CA (http://%s/ca.crt) against
  ca_sha256=%s
before it changes anything. This page comes over plain HTTP as well:
compare that fingerprint with the ca_sha256 regproxy logs at start.
--help shows a script's options, --dry-run its changes; /setup/ lists
the scripts.
`
