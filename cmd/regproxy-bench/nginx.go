package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// The nginx peer: nginx's proxy_cache in front of the bench's upstream,
// configured with the caching semantics of rpardini/docker-registry-proxy
// (the nginx setup regproxy replaces). That proxy is a MITM CONNECT proxy
// itself; here nginx is a TLS reverse proxy for the registry's name, which
// clients dial directly, trusting the bench's CA. The CONNECT leg is left
// out of nginx's figures.

// nginxFallbacks are where Debian puts nginx, outside a normal user's PATH.
var nginxFallbacks = []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"}

// findNginx returns the nginx binary to run, or "" and why there is none.
// flag is -nginx: "off" disables the peer, a path names the binary, ""
// looks on PATH and in the usual places.
func findNginx(flag string) (bin, why string) {
	switch flag {
	case "off":
		return "", "disabled with -nginx off"
	case "":
		if p, err := exec.LookPath("nginx"); err == nil {
			return p, ""
		}
		for _, p := range nginxFallbacks {
			if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				return p, ""
			}
		}
		return "", "nginx not installed (Debian: nginx-light; `make test-deps` installs it)"
	default:
		return flag, ""
	}
}

// nginx is the running peer.
type nginx struct {
	*proc
	addr    string // 127.0.0.1:PORT, TLS, for the registry's name
	version string
}

// nginxConf is the whole configuration: nothing from /etc/nginx is read.
// Everything nginx writes (pid, error log, temp files, cache) stays in
// .Dir. Caching, as rpardini/docker-registry-proxy sets it:
//   - one proxy_cache; blobs keyed by digest alone, manifests by URI;
//   - proxy_cache_lock on with a lock timeout of 880 s, so that concurrent
//     misses wait for the first fetch instead of fetching again (waiters get
//     nothing until that fetch is complete in the cache);
//   - 200 and 206 answers cached for 60 days; manifests by tag for the
//     manifest TTL (1h, MANIFEST_CACHE_DEFAULT_TIME), served stale when the
//     upstream errs;
//   - upstream cache headers ignored, ranges served from cached files,
//     client aborts do not stop a fill.
//
// Like rpardini's, it logs every request to a file, with the cache
// status, as regproxy (run at its default level) logs every request to
// stderr. The bench's own additions: keepalive_requests high enough for scenario d's one connection, and an
// upstream block with keep-alive.
var nginxConf = template.Must(template.New("nginx.conf").Parse(`# regproxy-bench's nginx peer; written for one run, removed after it.
{{if .User}}user {{.User}};
{{end}}worker_processes auto;
daemon off;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;
events { worker_connections 4096; }
http {
    log_format cachelog '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                        '$upstream_cache_status $request_time "$http_user_agent"';
    access_log {{.Dir}}/access.log cachelog;
    client_body_temp_path {{.Dir}}/tmp/body;
    proxy_temp_path {{.Dir}}/tmp/proxy;
    fastcgi_temp_path {{.Dir}}/tmp/fastcgi;
    uwsgi_temp_path {{.Dir}}/tmp/uwsgi;
    scgi_temp_path {{.Dir}}/tmp/scgi;
    proxy_cache_path {{.Dir}}/cache levels=1:2 keys_zone=registry:10m inactive=60d max_size=16g use_temp_path=off;

    upstream registry {
        server {{.Upstream}};
        keepalive 32;
    }

    server {
        listen {{.Listen}} ssl;
        server_name {{.Host}};
        ssl_certificate {{.Cert}};
        ssl_certificate_key {{.Key}};
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests 100000;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_ssl_server_name on;
        proxy_ssl_name {{.Host}};
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate {{.CA}};
        proxy_read_timeout 900s;

        proxy_cache_lock on;
        proxy_cache_lock_timeout 880s;
        proxy_cache_valid 200 206 60d;
        proxy_force_ranges on;
        proxy_ignore_client_abort on;
        proxy_cache_revalidate on;
        proxy_hide_header Set-Cookie;
        proxy_ignore_headers X-Accel-Expires Expires Cache-Control Set-Cookie;

        location ~ "^/v2/.+/blobs/(?<blob_digest>sha256:[0-9a-f]{64})$" {
            proxy_pass https://registry;
            proxy_cache registry;
            proxy_cache_key $blob_digest;
            proxy_cache_use_stale error timeout http_500 http_502 http_504 http_429;
        }
        location ~ ^/v2/.+/manifests/sha256: {
            proxy_pass https://registry;
            proxy_cache registry;
            proxy_cache_key $uri;
            proxy_cache_use_stale error timeout http_500 http_502 http_504 http_429;
        }
        location ~ ^/v2/.+/manifests/ {
            proxy_pass https://registry;
            proxy_cache registry;
            proxy_cache_key $uri;
            proxy_cache_valid 200 206 {{.ManifestTTL}};
            proxy_cache_use_stale error timeout http_500 http_502 http_504 http_429;
        }
        location / {
            proxy_pass https://registry;
            proxy_cache off;
        }
    }
}
`))

// nginxManifestTTL matches regproxy's --manifest-ttl in scenarios a–e.
const nginxManifestTTL = "1h"

// startNginx writes a config under dir/nginx and runs bin in the
// foreground (daemon off) as the current user on a free loopback port,
// in front of up. It waits until the port accepts connections.
func startNginx(ctx context.Context, bin, dir string, up *upstream, p *pki) (*nginx, error) {
	root := filepath.Join(dir, "nginx")
	for _, d := range []string{"tmp", "cache"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, err
		}
	}
	version := nginxVersion(ctx, bin)
	for attempt := 1; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		if err := writeNginxConf(root, addr, up, p); err != nil {
			return nil, err
		}
		conf := filepath.Join(root, "nginx.conf")
		np, err := startProc("nginx", filepath.Join(root, "stderr.log"), bin,
			"-p", root, "-c", conf, "-e", filepath.Join(root, "error.log"))
		if err != nil {
			return nil, err
		}
		if err = np.waitReady(ctx, func(context.Context) error { return dialOnce(addr) }); err == nil {
			return &nginx{proc: np, addr: addr, version: version}, nil
		}
		err = fmt.Errorf("%w\nerror.log: %s", err, tailFile(filepath.Join(root, "error.log")))
		exited := !np.running()
		np.stop()
		if !exited || attempt == startAttempts || ctx.Err() != nil {
			return nil, err
		}
	}
}

func writeNginxConf(root, addr string, up *upstream, p *pki) error {
	f, err := os.Create(filepath.Join(root, "nginx.conf"))
	if err != nil {
		return err
	}
	err = nginxConf.Execute(f, map[string]string{
		"User": nginxUser(), "Dir": root, "Listen": addr, "Upstream": up.addr(), "Host": upstreamHost,
		"Cert": p.crtFile, "Key": p.keyFile, "CA": p.caFile, "ManifestTTL": nginxManifestTTL,
	})
	return errors.Join(err, f.Close())
}

// nginxUser is the "user" directive's argument: the current user and
// group when nginx starts as root (its workers would otherwise switch to
// nobody, who cannot enter the bench's 0700 temp dir), else "" (nginx
// ignores the directive when it is not root, with a warning).
func nginxUser() string {
	if os.Geteuid() != 0 {
		return ""
	}
	u, err := user.Current()
	if err != nil {
		return "root root"
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		return u.Username
	}
	return u.Username + " " + g.Name
}

// nginxVersion is what `nginx -v` prints, less its prefix.
func nginxVersion(ctx context.Context, bin string) string {
	out, _ := exec.CommandContext(ctx, bin, "-v").CombinedOutput()
	v := strings.TrimSpace(string(out))
	return strings.TrimPrefix(v, "nginx version: ")
}

// tailFile is the end of a file, for error messages.
func tailFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b[max(0, len(b)-2048):])
}

// stop ends nginx (SIGTERM is its fast shutdown; the master stops its
// workers), then kills any child of this master that outlived it.
func (n *nginx) stop() {
	kids := childPIDs(n.cmd.Process.Pid)
	n.proc.stop()
	for _, pid := range kids {
		// Still there and still nginx's (it renames its children so):
		// an orphaned worker, cache manager or cache loader.
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.HasPrefix(string(cmd), "nginx: ") {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// cpuTime is the CPU time of the master and its workers.
func (n *nginx) cpuTime() time.Duration {
	total := pidCPUTime(n.cmd.Process.Pid)
	for _, pid := range childPIDs(n.cmd.Process.Pid) {
		total += pidCPUTime(pid)
	}
	return total
}

// switches is the context switches of the master and its workers.
func (n *nginx) switches() int64 {
	total := pidSwitches(n.cmd.Process.Pid)
	for _, pid := range childPIDs(n.cmd.Process.Pid) {
		total += pidSwitches(pid)
	}
	return total
}

// childPIDs lists the processes whose parent is pid, from /proc.
func childPIDs(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var kids []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err == nil && parentPID(child) == pid {
			kids = append(kids, child)
		}
	}
	return kids
}

// parentPID is field 4 of /proc/PID/stat, or -1.
func parentPID(pid int) int {
	f := statFields(pid)
	if len(f) < 2 {
		return -1
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return -1
	}
	return ppid
}

// client returns a client that dials nginx for the registry's name,
// trusting only the bench's CA.
func (n *nginx) client(p *pki) *http.Client { return directClient(n.addr, p.pool) }
