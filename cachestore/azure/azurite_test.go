package azure

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Azurite's development account, with the well-known key its documentation
// publishes. It authenticates against nothing but a local emulator.
const (
	devAccount = "devstoreaccount1"
	devKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// azurite is an azurite-blob process serving one temporary directory.
type azurite struct {
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd has been waited for
	dir      string
	endpoint string // http://127.0.0.1:PORT/devstoreaccount1
}

// shared is the one Azurite of the test binary, started by the first test
// that needs it and stopped by TestMain.
var shared struct {
	once sync.Once
	az   *azurite
	err  error
}

// azuriteEndpoint returns the endpoint of the shared Azurite, starting it on
// first use. A missing azurite-blob fails the test: it is never skipped.
func azuriteEndpoint(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() { shared.az, shared.err = startAzurite() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.az.endpoint
}

// stopShared stops the shared Azurite, if it was started.
func stopShared() {
	if shared.az != nil {
		shared.az.stop()
	}
}

// findAzurite looks for azurite-blob in $AZURITE_BLOB, then where
// scripts/install-test-deps.sh installs it (.cache/azurite at the module
// root), then on PATH.
func findAzurite() (string, error) {
	if p := os.Getenv("AZURITE_BLOB"); p != "" {
		return p, nil
	}
	if root, err := moduleRoot(); err == nil {
		p := filepath.Join(root, ".cache", "azurite", "node_modules", ".bin", "azurite-blob")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("azurite-blob"); err == nil {
		return p, nil
	}
	return "", errors.New("azurite-blob not found in $AZURITE_BLOB, .cache/azurite or PATH: " +
		"run scripts/install-test-deps.sh, which installs it into .cache/azurite with npm")
}

// moduleRoot is the nearest directory above the working directory that
// holds go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// startAzurite starts azurite-blob on a free port in a new temporary
// directory and waits until it answers. A port taken between choosing and
// binding it is retried on another.
func startAzurite() (*azurite, error) {
	bin, err := findAzurite()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "azurite-")
	if err != nil {
		return nil, err
	}
	var errs []error
	for range 3 {
		az, err := startAzuriteOnce(bin, dir)
		if err == nil {
			return az, nil
		}
		errs = append(errs, err)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			break // another port will not help
		}
	}
	os.RemoveAll(dir)
	return nil, fmt.Errorf("start azurite: %w", errors.Join(errs...))
}

func startAzuriteOnce(bin, dir string) (*azurite, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "azurite.log"))
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	// Without --disableTelemetry Azurite tries to reach the internet.
	cmd := exec.Command(bin, "--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(port),
		"--location", dir, "--skipApiVersionCheck", "--loose", "--disableTelemetry")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true, // stop kills node and its children
		// A test binary that panics or times out never reaches TestMain's
		// stop: the kernel then ends Azurite with it.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	az := &azurite{cmd: cmd, exited: make(chan struct{}), dir: dir,
		endpoint: fmt.Sprintf("http://127.0.0.1:%d/%s", port, devAccount)}
	go func() { cmd.Wait(); close(az.exited) }()
	if err := az.waitReady(30 * time.Second); err != nil {
		az.kill()
		out, _ := os.ReadFile(logFile.Name())
		return nil, fmt.Errorf("%w; its output:\n%s", err, out)
	}
	return az, nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitReady polls until Azurite answers any HTTP request, it exits, or
// timeout passes.
func (az *azurite) waitReady(timeout time.Duration) error {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := hc.Get(az.endpoint + "?comp=list")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-az.exited:
			return fmt.Errorf("azurite-blob exited before answering on %s", az.endpoint)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("azurite-blob did not answer on %s within %v", az.endpoint, timeout)
}

// kill ends the process group: SIGTERM, then SIGKILL after 5 seconds.
func (az *azurite) kill() {
	pgid := az.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-az.exited:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-az.exited
	}
}

// stop ends Azurite and removes its directory.
func (az *azurite) stop() {
	az.kill()
	os.RemoveAll(az.dir)
}
