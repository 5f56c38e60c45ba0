// Package azuritetest runs Azurite, the Azure Blob Storage emulator, for
// tests: one azurite-blob process on a free loopback port, serving a
// temporary directory, stopped with its whole process group. It owns
// finding the azurite-blob that scripts/install-test-deps.sh installs, and
// never skips: a test that asks for Azurite fails when there is none. It
// knows nothing of regproxy's stores.
package azuritetest

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
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Azurite's development account, with the well-known key its documentation
// publishes. It authenticates against nothing but a local emulator.
const (
	Account = "devstoreaccount1"
	Key     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Azurite is an azurite-blob process serving one temporary directory.
type Azurite struct {
	// Endpoint is the blob service URL of Account:
	// http://127.0.0.1:PORT/devstoreaccount1.
	Endpoint string

	bin  string
	dir  string
	port int
	seq  atomic.Int64 // of Container's names

	mu     sync.Mutex    // guards cmd and exited, which Kill and Restart replace
	cmd    *exec.Cmd     // nil while killed
	exited chan struct{} // closed when cmd has been waited for
}

// Start starts azurite-blob on a free port in a new temporary directory and
// waits until it answers. A port taken between choosing and binding it is
// retried on another. Stop it with Stop.
func Start() (*Azurite, error) {
	bin, err := Find()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "azurite-")
	if err != nil {
		return nil, err
	}
	var errs []error
	for range 3 {
		port, err := freePort()
		if err != nil {
			errs = append(errs, err)
			break
		}
		az := &Azurite{bin: bin, dir: dir, port: port,
			Endpoint: fmt.Sprintf("http://127.0.0.1:%d/%s", port, Account)}
		if err = az.start(); err == nil {
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

// New is Start for one test: it fails t if Azurite cannot start, and stops
// it when t ends.
func New(t testing.TB) *Azurite {
	t.Helper()
	az, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(az.Stop)
	return az
}

// shared is the one Azurite of a test binary that calls Shared.
var shared struct {
	once sync.Once
	az   *Azurite
	err  error
}

// Shared returns the test binary's shared Azurite, starting it on first
// use; TestMain stops it with StopShared. Tests that kill or restart
// Azurite use New instead.
func Shared(t testing.TB) *Azurite {
	t.Helper()
	shared.once.Do(func() { shared.az, shared.err = Start() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.az
}

// StopShared stops the shared Azurite, if it was started.
func StopShared() {
	if shared.az != nil {
		shared.az.Stop()
	}
}

// Container returns a container name that no earlier call on az returned,
// so that each test gets a container of its own.
func (az *Azurite) Container() string {
	return fmt.Sprintf("test-%d", az.seq.Add(1))
}

// ConnectionString is a connection string for Account on az.
func (az *Azurite) ConnectionString() string {
	return "DefaultEndpointsProtocol=http;AccountName=" + Account + ";AccountKey=" + Key +
		";BlobEndpoint=" + az.Endpoint + ";"
}

// Find looks for azurite-blob in $AZURITE_BLOB, then where
// scripts/install-test-deps.sh installs it (.cache/azurite at the module
// root), then on PATH.
func Find() (string, error) {
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

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs azurite-blob on az's port and directory and waits until it
// answers.
func (az *Azurite) start() error {
	logFile, err := os.OpenFile(filepath.Join(az.dir, "azurite.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	// Without --disableTelemetry Azurite tries to reach the internet.
	cmd := exec.Command(az.bin, "--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(az.port),
		"--location", az.dir, "--skipApiVersionCheck", "--loose", "--disableTelemetry")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true, // Kill ends node and its children
		// A test binary that panics or times out never stops Azurite
		// itself: the kernel then ends Azurite with it.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", az.bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	az.mu.Lock()
	az.cmd, az.exited = cmd, exited
	az.mu.Unlock()
	if err := az.waitReady(exited, 30*time.Second); err != nil {
		az.Kill()
		out, _ := os.ReadFile(logFile.Name())
		return fmt.Errorf("%w; its output:\n%s", err, out)
	}
	return nil
}

// waitReady polls until Azurite answers any HTTP request, it exits, or
// timeout passes.
func (az *Azurite) waitReady(exited <-chan struct{}, timeout time.Duration) error {
	tr := &http.Transport{Proxy: nil}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := hc.Get(az.Endpoint + "?comp=list")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("azurite-blob exited before answering on %s", az.Endpoint)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("azurite-blob did not answer on %s within %v", az.Endpoint, timeout)
}

// Kill ends the process group (SIGTERM, then SIGKILL after 5 seconds) and
// keeps the directory, so that Restart serves the same blobs again. Killing
// a killed Azurite does nothing.
func (az *Azurite) Kill() {
	az.mu.Lock()
	cmd, exited := az.cmd, az.exited
	az.cmd = nil
	az.mu.Unlock()
	if cmd == nil {
		return
	}
	pgid := cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-exited
	}
}

// Restart starts a killed Azurite again, on the same port and directory.
func (az *Azurite) Restart() error {
	az.mu.Lock()
	running := az.cmd != nil
	az.mu.Unlock()
	if running {
		return errors.New("azuritetest: Restart of a running Azurite")
	}
	return az.start()
}

// Stop ends Azurite and removes its directory.
func (az *Azurite) Stop() {
	az.Kill()
	os.RemoveAll(az.dir)
}

// StopSharedAfter wraps m so that its Run stops the shared Azurite once
// the tests have run, before TestMain checks for leaked goroutines:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(azuritetest.StopSharedAfter(m)) }
func StopSharedAfter(m interface{ Run() int }) interface{ Run() int } { return stopAfter{m} }

type stopAfter struct{ m interface{ Run() int } }

func (s stopAfter) Run() int {
	defer StopShared()
	return s.m.Run()
}
