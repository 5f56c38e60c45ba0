package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The tests of examples/ check each example with the program that reads
// it where make test-deps installs one (docker-compose, systemd-analyze,
// ansible-playbook), and in Go against the fields of its schema where
// none exists (Kubernetes manifests, the kind config). Every flag and
// REGPROXY_ variable an example passes must be one serve takes.

// examplesDir is the repository's examples/, from this package.
const examplesDir = "../../examples"

// tool returns the path of a program an example's test runs, failing the
// test, never skipping it, when make test-deps has not installed it.
func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s missing: run make test-deps (scripts/install-test-deps.sh installs the Debian package %s)", name, pkg)
	}
	return path
}

// runTool runs a program with a time limit and returns its combined output.
func runTool(t *testing.T, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// serveFlagNames are the names (aliases included) of serve's flags.
func serveFlagNames() map[string]bool {
	names := map[string]bool{}
	for _, f := range serveFlags() {
		for _, n := range f.Names() {
			names[n] = true
		}
	}
	return names
}

// checkServeArgs checks that every flag of args (--name=value, or --name
// and its value) is one of serve's.
func checkServeArgs(t *testing.T, where string, args []string) {
	t.Helper()
	known := serveFlagNames()
	for _, a := range args {
		name, ok := strings.CutPrefix(a, "--")
		if !ok {
			continue // a value, or a command word (serve)
		}
		name, _, _ = strings.Cut(name, "=")
		if !known[name] {
			t.Errorf("%s: --%s is no flag of regproxy serve", where, name)
		}
	}
}

// checkServeEnv checks that every REGPROXY_ variable is one serve reads.
func checkServeEnv(t *testing.T, where string, names []string) {
	t.Helper()
	known := serveEnvVars()
	for _, n := range names {
		if strings.HasPrefix(n, "REGPROXY_") && !known[n] {
			t.Errorf("%s: %s is no variable of regproxy serve", where, n)
		}
	}
}

// decodeAll decodes every YAML document of file, refusing fields that T
// lacks when strict.
func decodeAll[T any](t *testing.T, file string, strict bool) []T {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(strict)
	var docs []T
	for {
		var doc T
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s, document %d: %v", file, len(docs)+1, err)
		}
		docs = append(docs, doc)
	}
}

// composeFile is the part of a Compose file the test reads.
type composeFile struct {
	Services map[string]struct {
		Build struct {
			Context string `yaml:"context"`
		} `yaml:"build"`
		Image           string            `yaml:"image"`
		User            string            `yaml:"user"`
		ReadOnly        bool              `yaml:"read_only"`
		CapDrop         []string          `yaml:"cap_drop"`
		Ports           []string          `yaml:"ports"`
		Environment     map[string]string `yaml:"environment"`
		Volumes         []string          `yaml:"volumes"`
		StopGracePeriod string            `yaml:"stop_grace_period"`
		Healthcheck     struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

// TestComposeExample validates examples/compose/docker-compose.yml with
// docker-compose config (which checks it against the Compose schema and
// needs no daemon), then checks that it runs the image as the Dockerfile
// means it to run (its user, a read-only root, the named volume on the
// data directory, port 3128) and that its health check is a command the
// binary takes and passes against a healthy server.
func TestComposeExample(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(examplesDir, "compose")
	compose := tool(t, "docker-compose", "docker-compose")
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	if out, err := runTool(t, dir, env, compose, "-f", "docker-compose.yml", "config", "-q"); err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
	cf := decodeAll[composeFile](t, filepath.Join(dir, "docker-compose.yml"), false)[0]
	svc, ok := cf.Services["regproxy"]
	if !ok {
		t.Fatal("no service regproxy")
	}
	if _, err := os.Stat(filepath.Join(dir, svc.Build.Context, "Dockerfile")); err != nil {
		t.Errorf("build context %q holds no Dockerfile: %v", svc.Build.Context, err)
	}
	if svc.User != "65532:65532" || !svc.ReadOnly || !slices.Equal(svc.CapDrop, []string{"ALL"}) {
		t.Errorf("user %q, read_only %v, cap_drop %q; want the image's 65532:65532, true, ALL", svc.User, svc.ReadOnly, svc.CapDrop)
	}
	if !slices.Contains(svc.Ports, "3128:3128") {
		t.Errorf("ports %q, want 3128:3128", svc.Ports)
	}
	volume, path, _ := strings.Cut(firstOr(svc.Volumes), ":")
	if _, named := cf.Volumes[volume]; !named || path != "/var/lib/regproxy" {
		t.Errorf("volumes %q, want a named volume on /var/lib/regproxy", svc.Volumes)
	}
	var names []string
	for n := range svc.Environment {
		names = append(names, n)
	}
	checkServeEnv(t, "docker-compose.yml", names)
	if d, err := time.ParseDuration(svc.StopGracePeriod); err != nil || d <= 30*time.Second {
		t.Errorf("stop_grace_period %q, want more than the 30s --shutdown-grace", svc.StopGracePeriod)
	}
	checkComposeHealthcheck(t, svc.Healthcheck.Test)
}

func firstOr(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// checkComposeHealthcheck runs the health check's command with the
// binary, against a server that answers /healthz where the container's
// own regproxy would be.
func checkComposeHealthcheck(t *testing.T, test []string) {
	t.Helper()
	if len(test) < 3 || test[0] != "CMD" || test[1] != "/regproxy" || test[2] != "healthcheck" {
		t.Fatalf("healthcheck test %q, want [CMD /regproxy healthcheck ...]: distroless has no shell", test)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	args := append(slices.Clone(test[2:]), "--url", srv.URL+"/healthz")
	if out, err := runTool(t, "", nil, binary, args...); err != nil {
		t.Errorf("regproxy %s: %v, output %q; want exit 0", strings.Join(args, " "), err, out)
	}
}

// TestExamplesShellcheck keeps every shell script under examples/ free of
// shellcheck findings, as make lint does.
func TestExamplesShellcheck(t *testing.T) {
	t.Parallel()
	shellcheck := tool(t, "shellcheck", "shellcheck")
	var scripts []string
	err := filepath.WalkDir(examplesDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".sh") {
			scripts = append(scripts, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(scripts, filepath.Join(examplesDir, "kind", "create-cluster.sh")) {
		t.Errorf("examples/kind/create-cluster.sh missing from %q", scripts)
	}
	if out, err := runTool(t, "", nil, shellcheck, append([]string{"-x"}, scripts...)...); err != nil {
		t.Errorf("shellcheck -x %s: %v\n%s", strings.Join(scripts, " "), err, out)
	}
}
