package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// kindDir is the kind example, from this package.
var kindDir = filepath.Join(examplesDir, "kind")

// kindCluster mirrors kind's v1alpha4 Cluster (sigs.k8s.io/kind,
// pkg/apis/config/v1alpha4/types.go), every field, so that a strict decode
// refuses a misspelt or misplaced one as kind would.
type kindCluster struct {
	Kind                            string              `yaml:"kind"`
	APIVersion                      string              `yaml:"apiVersion"`
	Name                            string              `yaml:"name"`
	Nodes                           []kindNode          `yaml:"nodes"`
	Networking                      kindNetworking      `yaml:"networking"`
	FeatureGates                    map[string]bool     `yaml:"featureGates"`
	RuntimeConfig                   map[string]string   `yaml:"runtimeConfig"`
	KubeadmConfigPatches            []string            `yaml:"kubeadmConfigPatches"`
	KubeadmConfigPatchesJSON6902    []kindPatchJSON6902 `yaml:"kubeadmConfigPatchesJSON6902"`
	ContainerdConfigPatches         []string            `yaml:"containerdConfigPatches"`
	ContainerdConfigPatchesJSON6902 []string            `yaml:"containerdConfigPatchesJSON6902"`
}

type kindNode struct {
	Role                         string              `yaml:"role"`
	Image                        string              `yaml:"image"`
	Labels                       map[string]string   `yaml:"labels"`
	ExtraMounts                  []kindMount         `yaml:"extraMounts"`
	ExtraPortMappings            []kindPortMapping   `yaml:"extraPortMappings"`
	GPUs                         string              `yaml:"gpus"`
	KubeadmConfigPatches         []string            `yaml:"kubeadmConfigPatches"`
	KubeadmConfigPatchesJSON6902 []kindPatchJSON6902 `yaml:"kubeadmConfigPatchesJSON6902"`
}

type kindNetworking struct {
	IPFamily          string    `yaml:"ipFamily"`
	APIServerPort     int32     `yaml:"apiServerPort"`
	APIServerAddress  string    `yaml:"apiServerAddress"`
	PodSubnet         string    `yaml:"podSubnet"`
	ServiceSubnet     string    `yaml:"serviceSubnet"`
	DisableDefaultCNI bool      `yaml:"disableDefaultCNI"`
	KubeProxyMode     string    `yaml:"kubeProxyMode"`
	DNSSearch         *[]string `yaml:"dnsSearch"`
}

type kindPatchJSON6902 struct {
	Group   string `yaml:"group"`
	Version string `yaml:"version"`
	Kind    string `yaml:"kind"`
	Patch   string `yaml:"patch"`
}

type kindMount struct {
	ContainerPath  string `yaml:"containerPath"`
	HostPath       string `yaml:"hostPath"`
	Readonly       bool   `yaml:"readOnly"`
	SelinuxRelabel bool   `yaml:"selinuxRelabel"`
	Propagation    string `yaml:"propagation"`
}

type kindPortMapping struct {
	ContainerPort int32  `yaml:"containerPort"`
	HostPort      int32  `yaml:"hostPort"`
	ListenAddress string `yaml:"listenAddress"`
	Protocol      string `yaml:"protocol"`
}

// TestKindExample checks examples/kind: kind.yaml is a v1alpha4 Cluster
// (decoded strictly against kind's fields and enums) whose containerd
// reads registry hosts from the mounted certs.d, and whose every node
// mounts the hosts dir and the CA that create-cluster.sh writes;
// certs.d/_default/hosts.toml sends every registry to the mirror that
// create-cluster.sh starts, over TLS for the name it gives regproxy.
func TestKindExample(t *testing.T) {
	t.Parallel()
	docs := decodeAll[kindCluster](t, filepath.Join(kindDir, "kind.yaml"), true)
	if len(docs) != 1 {
		t.Fatalf("%d documents, want 1", len(docs))
	}
	c := docs[0]
	if c.Kind != "Cluster" || c.APIVersion != "kind.x-k8s.io/v1alpha4" {
		t.Errorf("kind %q apiVersion %q, want Cluster kind.x-k8s.io/v1alpha4", c.Kind, c.APIVersion)
	}
	configPath := checkKindPatches(t, c.ContainerdConfigPatches)
	checkKindNodes(t, c.Nodes, configPath)
	mirror := kindHostsMirror(t)
	run := kindScriptRun(t)
	env := dockerRunEnv(t, run)
	if mirror.Scheme != "https" || mirror.Hostname() != env["REGPROXY_MIRROR_HOSTNAME"] || ":"+mirror.Port() != env["REGPROXY_MIRROR_LISTEN"] {
		t.Errorf("hosts.toml names the mirror %s; create-cluster.sh runs it with REGPROXY_MIRROR_LISTEN=%s REGPROXY_MIRROR_HOSTNAME=%s",
			mirror, env["REGPROXY_MIRROR_LISTEN"], env["REGPROXY_MIRROR_HOSTNAME"])
	}
}

// checkKindPatches checks that containerd reads registry hosts from a
// config_path, which it returns.
func checkKindPatches(t *testing.T, patches []string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^\[plugins\."io\.containerd\.grpc\.v1\.cri"\.registry\]\n\s*config_path = "([^"]+)"$`)
	for _, p := range patches {
		if m := re.FindStringSubmatch(p); m != nil {
			return m[1]
		}
	}
	t.Fatalf("no containerdConfigPatches sets the CRI registry's config_path: %q", patches)
	return ""
}

// checkKindNodes checks each node's role and mounts: the hosts dir at
// configPath and the CA in the system roots' directory, both read-only
// and both from files of the example's directory (the CA once
// create-cluster.sh has written it).
func checkKindNodes(t *testing.T, nodes []kindNode, configPath string) {
	t.Helper()
	if !slices.ContainsFunc(nodes, func(n kindNode) bool { return n.Role == "control-plane" }) {
		t.Error("no control-plane node")
	}
	for i, n := range nodes {
		if n.Role != "control-plane" && n.Role != "worker" {
			t.Errorf("node %d: role %q, want control-plane or worker", i, n.Role)
		}
		mounts := map[string]kindMount{}
		for _, m := range n.ExtraMounts {
			if !slices.Contains([]string{"", "None", "HostToContainer", "Bidirectional"}, m.Propagation) {
				t.Errorf("node %d: propagation %q", i, m.Propagation)
			}
			mounts[m.ContainerPath] = m
		}
		hosts, ok := mounts[configPath]
		if !ok || !hosts.Readonly {
			t.Errorf("node %d mounts no read-only hosts dir at %s", i, configPath)
		} else if _, err := os.Stat(filepath.Join(kindDir, hosts.HostPath, "_default", "hosts.toml")); err != nil {
			t.Errorf("node %d: hostPath %s holds no _default/hosts.toml: %v", i, hosts.HostPath, err)
		}
		ca, ok := mounts["/etc/ssl/certs/regproxy-ca.pem"]
		if !ok || !ca.Readonly || ca.HostPath != "regproxy-ca.crt" {
			t.Errorf("node %d: want regproxy-ca.crt mounted read-only in /etc/ssl/certs, where Go finds roots", i)
		}
	}
}

// kindHostsMirror reads certs.d/_default/hosts.toml: one mirror host,
// for pulls and resolving tags, and no server line (the fallback is then
// the registry itself).
func kindHostsMirror(t *testing.T) *url.URL {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(kindDir, "certs.d", "_default", "hosts.toml"))
	if err != nil {
		t.Fatal(err)
	}
	text := regexp.MustCompile(`(?m)^\s*#.*\n`).ReplaceAllString(string(b), "")
	m := regexp.MustCompile(`^\s*\[host\."([^"]+)"\]\n\s*capabilities = \["pull", "resolve"\]\s*$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("hosts.toml = %q, want one [host.\"URL\"] with capabilities pull and resolve, and no server", text)
	}
	u, err := url.Parse(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// dockerRunEnv returns the -e NAME=VALUE of the docker run line, checked
// as serve's variables, and checks the volume on the data directory.
func dockerRunEnv(t *testing.T, run []string) map[string]string {
	t.Helper()
	env := map[string]string{}
	var names []string
	for i := 0; i+1 < len(run); i++ {
		switch run[i] {
		case "-e":
			k, v, _ := strings.Cut(run[i+1], "=")
			env[k] = v
			names = append(names, k)
		case "-v":
			if _, path, _ := strings.Cut(run[i+1], ":"); path != "/var/lib/regproxy" {
				t.Errorf("docker run -v %s, want a volume on /var/lib/regproxy", run[i+1])
			}
		}
	}
	checkServeEnv(t, "create-cluster.sh", names)
	return env
}

// stubDocker and stubKind stand in for docker and kind in
// TestKindCreateCluster: they log each call, and docker exec runs the
// real binary (REGPROXY_BIN) against a running regproxy.
const (
	stubDocker = `#!/bin/sh
echo "docker $*" >>"$STUB_LOG"
case "$1 $2" in
"container inspect") test -e "$STUB_STATE/created"; exit ;;
"network inspect") exit 0 ;;
esac
case "$1" in
run) touch "$STUB_STATE/created" ;;
exec) shift 3; exec "$REGPROXY_BIN" "$@" ;;
esac
`
	stubKind = `#!/bin/sh
echo "kind $*" >>"$STUB_LOG"
test -f kind.yaml && test -f certs.d/_default/hosts.toml && test -s regproxy-ca.crt
`
)

// kindScriptRun reads the docker run line of create-cluster.sh, its
// continued lines joined, as words.
func kindScriptRun(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(kindDir, "create-cluster.sh"))
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.ReplaceAll(string(b), "\\\n", " ")
	line := regexp.MustCompile(`(?m)^\s*docker run .*$`).FindString(joined)
	if line == "" {
		t.Fatal("create-cluster.sh has no docker run line")
	}
	return strings.Fields(line)
}

// TestKindCreateCluster runs examples/kind/create-cluster.sh, twice, in a
// copy of the example with docker and kind stubbed: it must start regproxy
// once, wait for its health check, write the CA that regproxy serves where
// kind.yaml mounts it from, create the cluster from kind.yaml, and join
// regproxy to kind's network. regproxy (the real one, with the mirror
// settings of the script's docker run) must then answer a node's TLS
// handshake for the name the nodes use, with a certificate the written CA
// verifies.
func TestKindCreateCluster(t *testing.T) {
	t.Parallel()
	env := dockerRunEnv(t, kindScriptRun(t))
	dataDir := t.TempDir()
	d := startDaemonEnv(t, []string{"REGPROXY_MIRROR_LISTEN=127.0.0.1:0", "REGPROXY_MIRROR_HOSTNAME=" + env["REGPROXY_MIRROR_HOSTNAME"]},
		"--data-dir", dataDir) // the later --data-dir wins over startDaemon's own
	dir := copyDir(t, kindDir)
	stubs, state := t.TempDir(), t.TempDir()
	writeExec(t, filepath.Join(stubs, "docker"), stubDocker)
	writeExec(t, filepath.Join(stubs, "kind"), stubKind)
	logFile := filepath.Join(state, "calls")
	scriptEnv := []string{"PATH=" + stubs + ":" + os.Getenv("PATH"), "STUB_LOG=" + logFile, "STUB_STATE=" + state,
		"REGPROXY_BIN=" + binary, "REGPROXY_LISTEN=" + d.addr, "REGPROXY_DATA_DIR=" + dataDir}
	for range 2 {
		if out, err := runTool(t, dir, scriptEnv, "sh", "create-cluster.sh", "regproxy:test"); err != nil {
			t.Fatalf("create-cluster.sh: %v\n%s", err, out)
		}
	}
	calls, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	checkKindCalls(t, strings.Split(strings.TrimSpace(string(calls)), "\n"))
	_, served, err := d.get("/ca.crt")
	if err != nil {
		t.Fatal(err)
	}
	written, err := os.ReadFile(filepath.Join(dir, "regproxy-ca.crt"))
	if err != nil || string(written) != string(served) {
		t.Fatalf("regproxy-ca.crt = %q, %v; want the CA regproxy serves", written, err)
	}
	checkMirrorTLS(t, d, env["REGPROXY_MIRROR_HOSTNAME"], written)
}

// checkKindCalls checks what create-cluster.sh asked of docker and kind,
// over two runs: regproxy started once, and everything else each time.
func checkKindCalls(t *testing.T, calls []string) {
	t.Helper()
	var got []string
	for _, c := range calls {
		if strings.HasPrefix(c, "docker run ") {
			c = "docker run …" // its words are dockerRunEnv's
		}
		got = append(got, c)
	}
	once := []string{
		"docker container inspect regproxy",
		"docker exec regproxy /regproxy healthcheck",
		"docker exec regproxy /regproxy ca print",
		"kind create cluster --config kind.yaml",
		"docker network inspect kind --format {{range .Containers}}{{.Name}} {{end}}",
		"docker network connect kind regproxy",
	}
	want := slices.Concat(once[:1], []string{"docker run …"}, once[1:], once)
	if !slices.Equal(got, want) {
		t.Errorf("create-cluster.sh twice called:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if i := slices.IndexFunc(calls, func(c string) bool { return strings.HasPrefix(c, "docker run ") }); i >= 0 && !strings.HasSuffix(calls[i], " regproxy:test") {
		t.Errorf("%s: want the image given, regproxy:test, last", calls[i])
	}
}

// checkMirrorTLS makes a node's request to regproxy's mirror port, named
// as the nodes name it, trusting only ca: GET /v2/?ns=docker.io, as
// containerd pings through a _default host.
func checkMirrorTLS(t *testing.T, d *daemon, hostname string, ca []byte) {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatal("no certificate in the written CA")
	}
	addr := loggedMirrorAddr(t, d)
	var dialer net.Dialer
	c := &http.Client{
		Transport: &http.Transport{
			Proxy: nil,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, addr)
			},
			TLSClientConfig:   &tls.Config{RootCAs: roots},
			DisableKeepAlives: true,
		},
		Timeout: 10 * time.Second,
	}
	resp, err := c.Get("https://" + net.JoinHostPort(hostname, "5000") + "/v2/?ns=docker.io")
	if err != nil {
		t.Fatalf("GET /v2/ from the mirror as %s: %v", hostname, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/?ns=docker.io from the mirror: %s, want 200", resp.Status)
	}
}

// loggedMirrorAddr is where regproxy logged that its mirror port listens.
func loggedMirrorAddr(t *testing.T, d *daemon) string {
	t.Helper()
	for _, e := range d.entries(0) {
		if e.Msg == "regproxy mirror serving" && e.Listen != "" {
			return e.Listen
		}
	}
	t.Fatalf("no \"regproxy mirror serving\" line:\n%s", d.log)
	return ""
}

// copyDir copies the regular files under src into a new directory.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(path string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if e.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if rel == "regproxy-ca.crt" { // a developer's own run
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// writeExec writes an executable script.
func writeExec(t *testing.T, file, text string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
}
