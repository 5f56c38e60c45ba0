package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/azure"
	"github.com/regproxy/regproxy/internal/azuritetest"
	"github.com/regproxy/regproxy/internal/testupstream"
)

// TestStorageBadFlags checks the storage flags' usage errors: exit 2 and
// one line naming the flag, before any request to Azure, and never the key.
func TestStorageBadFlags(t *testing.T) {
	const key = "c2VjcmV0IGtleQ=" // not base64: one "=" short
	azureArgs := func(extra ...string) []string {
		return append([]string{"--storage", "azure", "--azure-account-name", "acct", "--azure-endpoint", "http://127.0.0.1:9/acct"}, extra...)
	}
	for _, tc := range []struct {
		name string
		args []string
		flag string
	}{
		{"storage unknown", []string{"--storage", "bogus"}, "--storage"},
		{"container under disk", []string{"--azure-container", "cache"}, "--azure-container"},
		{"account under disk", []string{"--storage", "disk", "--azure-account-name", "acct"}, "--azure-account-name"},
		{"azure without account", []string{"--storage", "azure"}, "--azure-account-name"},
		{"key not base64", azureArgs("--azure-account-key", key), "--azure-account-key"},
		{"container name", azureArgs("--azure-container", "Cache"), "--azure-container"},
		{"endpoint scheme", azureArgs("--azure-endpoint", "ftp://h/acct"), "--azure-endpoint"},
		{"connection string and account", azureArgs("--azure-connection-string", "AccountName=x"), "--azure-connection-string"},
		{"connection string malformed", []string{"--storage", "azure", "--azure-connection-string", "nonsense"}, "--azure-connection-string"},
		{"disk cache size under disk", []string{"--disk-cache-size", "10G"}, "--disk-cache-size"},
		{"disk cache size not a size", azureArgs("--disk-cache-size", "ten"), "--disk-cache-size"},
		{"disk cache size zero", azureArgs("--disk-cache-size", "0"), "--disk-cache-size"},
		{"disk cache size negative", azureArgs("--disk-cache-size", "-5G"), "--disk-cache-size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, serveArgs(t, tc.args...)...)
			wantUsageError(t, tc.flag, code, stdout, stderr)
			if strings.Contains(stderr, key) {
				t.Errorf("stderr %q shows the key", stderr)
			}
		})
	}
}

// TestStorageFlagsFromEnv checks that the storage flags are read from
// REGPROXY_ variables, as the others are. t.Setenv forbids t.Parallel.
func TestStorageFlagsFromEnv(t *testing.T) {
	for _, tc := range []struct{ env, value, flag string }{
		{"REGPROXY_STORAGE", "bogus", "--storage"},
		{"REGPROXY_AZURE_CONTAINER", "cache", "--azure-container"}, // under --storage disk
		{"REGPROXY_DISK_CACHE_SIZE", "10G", "--disk-cache-size"},   // under --storage disk
	} {
		t.Run(tc.env, func(t *testing.T) {
			t.Setenv(tc.env, tc.value)
			code, stdout, stderr := runCLI(t, serveArgs(t)...)
			wantUsageError(t, tc.flag, code, stdout, stderr)
		})
	}
}

// runBinary runs regproxy serve to its end, as startDaemonEnv would start
// it, and returns its exit code and output.
func runBinary(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd, cancel := timedCmd(t.Context(), 60*time.Second, binary, append([]string{"serve", "--listen", "127.0.0.1:0",
		"--data-dir", t.TempDir(), "--log-format", "json"}, args...)...)
	defer cancel()
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(),
		"HTTPS_PROXY=http://127.0.0.1:9", "HTTP_PROXY=http://127.0.0.1:9"}, env...)
	out, err := cmd.CombinedOutput()
	killLeftovers(t, "regproxy", cmd)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("regproxy serve %q: %v\n%s", args, err, out)
	return 0, ""
}

// The Azure tests below do not call t.Parallel: they run before the
// parallel client tests, whose timeouts a busy Azurite (a node process)
// would squeeze.

// TestAzureStartFailures runs the binary against Azurite with storage it
// cannot use: it must stop before opening its port, with one line and exit
// 1 (2 for a bad value), and never fall back to disk.
func TestAzureStartFailures(t *testing.T) {
	az := azuritetest.New(t)
	wrongKey := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", 64)))
	account := []string{"--storage", "azure", "--azure-account-name", azuritetest.Account}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{"wrong key", []string{"REGPROXY_AZURE_ACCOUNT_KEY=" + wrongKey},
			append(account, "--azure-endpoint", az.Endpoint), 1, "authentication failed"},
		{"wrong key on the command line", nil,
			append(account, "--azure-endpoint", az.Endpoint, "--azure-account-key", wrongKey), 1, "authentication failed"},
		{"unreachable", []string{"REGPROXY_AZURE_ACCOUNT_KEY=" + azuritetest.Key},
			append(account, "--azure-endpoint", "http://127.0.0.1:9/"+azuritetest.Account), 1, "endpoint unreachable"},
		{"storage unknown", nil, []string{"--storage", "bogus"}, 2, `--storage: "bogus": want disk or azure`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, out := runBinary(t, tc.env, tc.args...)
			if code != tc.code {
				t.Errorf("exit code %d, want %d; output:\n%s", code, tc.code, out)
			}
			var errLines []string
			for line := range strings.Lines(out) {
				if strings.HasPrefix(line, "regproxy: ") {
					errLines = append(errLines, line)
				}
				if strings.Contains(line, "regproxy serving") {
					t.Errorf("regproxy served: %s", line)
				}
			}
			if len(errLines) != 1 || !strings.Contains(errLines[0], tc.want) {
				t.Errorf("error lines %q, want one holding %q; output:\n%s", errLines, tc.want, out)
			}
			for _, secret := range []string{wrongKey, azuritetest.Key} {
				if strings.Contains(out, secret) {
					t.Errorf("output shows a key:\n%s", out)
				}
			}
		})
	}
}

// azureReplicaArgs is the environment and the flags of a regproxy serving
// up's registry from container in az, its key in the environment as an
// admin's unit would pass it.
func azureReplicaArgs(az *azuritetest.Azurite, up *testupstream.Upstream, container string) (env, args []string) {
	env = []string{"REGPROXY_AZURE_ACCOUNT_KEY=" + azuritetest.Key}
	args = []string{"--registries", "registry.test", "--upstream-ca", up.CAFile, "--resolve", up.Resolve(),
		"--storage", "azure", "--azure-account-name", azuritetest.Account, "--azure-endpoint", az.Endpoint,
		"--azure-container", container}
	return env, args
}

// TestAzureReplicasShareContainer runs two regproxy processes on one
// container: what one filled, the other serves without asking upstream,
// and a cold blob asked of both at once is served by both. Neither keeps
// a blob under its --data-dir.
func TestAzureReplicasShareContainer(t *testing.T) {
	az := azuritetest.New(t)
	up := testupstream.Start(t)
	container := az.Container()
	env, args := azureReplicaArgs(az, up, container)
	a, b := startDaemonEnv(t, env, args...), startDaemonEnv(t, env, args...)

	img := up.RandomImage(t, 3, 512<<10)
	up.Push(t, "team/app", "v1", img)
	up.ResetCounts()
	pullThrough(t, a, up, "team/app:v1")
	if got := up.Count("GET blob"); got != 4 {
		t.Errorf("pull through A: %d upstream blob GETs, want 4 (config and 3 layers)", got)
	}
	waitCommitted(t, a)
	up.ResetCounts()
	pullThrough(t, b, up, "team/app:v1")
	if got := up.Count("GET blob") + up.Count("GET manifest"); got != 0 {
		t.Errorf("pull through B after A: %d upstream blob and manifest GETs, want 0", got)
	}

	// One cold blob, asked of A and B at once.
	cold := up.RandomImage(t, 1, 8<<20)
	up.Push(t, "team/big", "v1", cold)
	layers, _ := cold.Layers()
	d, _ := layers[0].Digest()
	up.ResetCounts()
	var wg sync.WaitGroup
	for _, dm := range []*daemon{a, b} {
		wg.Go(func() { getBlob(t, dm, up, "team/big", d) })
	}
	wg.Wait()
	if got := up.Count("GET blob"); got < 1 || got > 2 {
		t.Errorf("A and B filling one blob at once: %d upstream blob GETs, want 1 or 2", got)
	}
	for _, dm := range []*daemon{a, b} {
		waitCommitted(t, dm)
	}
	up.ResetCounts()
	getBlob(t, a, up, "team/big", d)
	getBlob(t, b, up, "team/big", d)
	if got := up.Count("GET blob"); got != 0 {
		t.Errorf("the blob again through A and B: %d upstream blob GETs, want 0", got)
	}
	wantCommitted(t, az, container, cachestore.BlobKey(digest.Digest(d.String())))
	for _, dm := range []*daemon{a, b} {
		wantNoBlobFiles(t, dm.dataDir(t))
		if dm.logged(0, func(e logEntry) bool { return strings.HasPrefix(e.Msg, "blob") }) {
			t.Errorf("a fill failed or was not cached:\n%s", dm.log)
		}
	}
}

// TestAzureLocalTier runs regproxy processes with --disk-cache-size in
// front of one container: a blob another replica cached is read from
// Azure, not upstream, and copied into the local tier; with Azure down, the
// local tier still serves; and the tier keeps under its size.
func TestAzureLocalTier(t *testing.T) {
	az := azuritetest.New(t)
	up := testupstream.Start(t)
	container := az.Container()
	env, args := azureReplicaArgs(az, up, container)
	args = append(args, "--min-free-space", "0")
	a := startDaemonEnv(t, env, append(args, "--disk-cache-size", "64M")...)

	img := up.RandomImage(t, 3, 512<<10)
	up.Push(t, "team/app", "v1", img)
	up.ResetCounts()
	pullThrough(t, a, up, "team/app:v1")
	if got := up.Count("GET blob"); got != 4 {
		t.Errorf("pull through A: %d upstream blob GETs, want 4 (config and 3 layers)", got)
	}
	waitCommitted(t, a)
	if n := localBlobBytes(t, a); n < 3*512<<10 {
		t.Errorf("A's local tier holds %d bytes of blobs, want the image's", n)
	}

	// B: its local tier is empty, so its blobs come from Azure.
	b := startDaemonEnv(t, env, append(args, "--disk-cache-size", "64M")...)
	up.ResetCounts()
	pullThrough(t, b, up, "team/app:v1")
	if got := up.Count("GET blob") + up.Count("GET manifest"); got != 0 {
		t.Errorf("pull through B after A: %d upstream blob and manifest GETs, want 0", got)
	}
	waitFor(t, "B's local tier to hold the image's blobs", func() bool { return localBlobBytes(t, b) >= 3*512<<10 })

	// Azure down: B serves the blobs from its local tier (and the tag and
	// manifests from memory).
	az.Kill()
	up.ResetCounts()
	pullThrough(t, b, up, "team/app:v1")
	if got := up.Count("GET blob"); got != 0 {
		t.Errorf("pull through B with Azure down: %d upstream blob GETs, want 0", got)
	}
	if err := az.Restart(); err != nil {
		t.Fatal(err)
	}

	// C: a local tier smaller than the image.
	c := startDaemonEnv(t, env, append(args, "--disk-cache-size", "1M")...)
	pullThrough(t, c, up, "team/app:v1")
	waitFor(t, "C's local tier to keep under 1 MiB", func() bool {
		n := localBlobBytes(t, c)
		return n > 0 && n <= 1<<20
	})
	for _, d := range []*daemon{a, b, c} {
		if d.logged(0, func(e logEntry) bool {
			return strings.HasPrefix(e.Msg, "blob") || strings.HasPrefix(e.Msg, "local cache")
		}) {
			t.Errorf("a fill or a local copy failed:\n%s", d.log)
		}
	}
}

// localBlobBytes is the bytes of the blob files in d's local tier.
func localBlobBytes(t *testing.T, d *daemon) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(filepath.Join(d.dataDir(t), "cache", "blobs"), func(path string, e os.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// waitFor polls cond until it holds, or fails the test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range pollTries {
		if cond() {
			return
		}
		time.Sleep(pollInterval)
	}
	t.Errorf("timed out waiting for %s", what)
}

// daemonClient reaches upstreams through d and trusts only d's CA.
func daemonClient(t *testing.T, d *daemon) *http.Transport {
	t.Helper()
	code, pem, err := d.get("/ca.crt")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /ca.crt: %d %v", code, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in /ca.crt")
	}
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: d.addr})}
	tr.TLSClientConfig = &tls.Config{RootCAs: roots}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// pullThrough pulls ref of up through d, reading and verifying every blob.
func pullThrough(t *testing.T, d *daemon, up *testupstream.Upstream, ref string) {
	t.Helper()
	r, err := name.ParseReference(up.Host + "/" + ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r, remote.WithTransport(daemonClient(t, d)), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("pull %s: %v", r, err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.RawConfigFile(); err != nil {
		t.Fatalf("pull %s: config: %v", r, err)
	}
	for _, l := range layers {
		rc, err := l.Compressed() // verified against its digest as it is read
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Fatalf("pull %s: layer: %v", r, err)
		}
	}
}

// getBlob GETs blob dg of repo through d and checks its digest.
func getBlob(t *testing.T, d *daemon, up *testupstream.Upstream, repo string, dg v1.Hash) {
	t.Helper()
	c := &http.Client{Transport: daemonClient(t, d), Timeout: time.Minute}
	resp, err := c.Get("https://" + up.Host + "/v2/" + repo + "/blobs/" + dg.String())
	if err != nil {
		t.Errorf("GET blob %s: %v", dg, err)
		return
	}
	defer resp.Body.Close()
	got, _, err := v1.SHA256(resp.Body)
	if resp.StatusCode != http.StatusOK || err != nil || got != dg {
		t.Errorf("GET blob %s: %s, digest %s, %v", dg, resp.Status, got, err)
	}
}

// waitCommitted waits until d holds no fill's spool file: each fill has
// committed its blob (or given up). Clients get a blob's last byte before
// its commit is done.
func waitCommitted(t *testing.T, d *daemon) {
	t.Helper()
	spool := filepath.Join(d.dataDir(t), "spool")
	for range pollTries {
		entries, err := os.ReadDir(spool)
		if err == nil && len(entries) == 0 {
			return
		}
		time.Sleep(pollInterval)
	}
	t.Errorf("%s still holds a fill's file", spool)
}

// dataDir is d's --data-dir, from its "regproxy serving" line.
func (d *daemon) dataDir(t *testing.T) string {
	t.Helper()
	for line := range strings.Lines(d.log.String()) {
		var e struct {
			Msg     string `json:"msg"`
			DataDir string `json:"data_dir"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.Msg == "regproxy serving" && e.DataDir != "" {
			return e.DataDir
		}
	}
	t.Fatal(`no data_dir on the "regproxy serving" line`)
	return ""
}

// wantNoBlobFiles fails if dir holds any file but the CA's.
func wantNoBlobFiles(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(dir, path); !e.IsDir() && filepath.Dir(rel) != "ca" {
			t.Errorf("azure mode left %s under --data-dir", rel)
		}
		return nil
	})
}

// wantCommitted fails unless key is in container of az.
func wantCommitted(t *testing.T, az *azuritetest.Azurite, container, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := azure.New(ctx, azure.Config{AccountName: azuritetest.Account, AccountKey: azuritetest.Key,
		Endpoint: az.Endpoint, Container: container})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.Open(ctx, key)
	if err != nil {
		t.Errorf("%s in the container: %v", key, err)
		return
	}
	r.Close()
}
