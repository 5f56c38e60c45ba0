package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Bounds of starting and stopping child processes.
const (
	startTimeout  = 15 * time.Second
	pollInterval  = 50 * time.Millisecond
	stopGrace     = 5 * time.Second
	startAttempts = 3 // a probed free port may be taken before the child binds it
)

// binaries are the programs the bench builds from the tree it runs in.
type binaries struct {
	regproxy string
	baseline string
}

// build compiles regproxy and the baseline server into dir from the module
// root, so that the bench always measures the code in the work tree.
func build(ctx context.Context, dir string) (binaries, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return binaries{}, fmt.Errorf("run inside the regproxy module (go env GOMOD: %q, %v)", gomod, err)
	}
	b := binaries{regproxy: filepath.Join(dir, "regproxy"), baseline: filepath.Join(dir, "baseline")}
	for _, t := range []struct{ out, pkg string }{
		{b.regproxy, "./cmd/regproxy"},
		{b.baseline, "./cmd/regproxy-bench/baseline"},
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", t.out, t.pkg)
		cmd.Dir = filepath.Dir(gomod)
		if out, err := cmd.CombinedOutput(); err != nil {
			return binaries{}, fmt.Errorf("go build %s: %v\n%s", t.pkg, err, out)
		}
	}
	return b, nil
}

// proc is a child process of the bench, with its output in a log file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed once the process has been waited for
	err     error         // Wait's result; read after exited is closed
	stopped sync.Once
}

// startProc starts bin with args and an environment free of proxy and
// regproxy variables, so that the caller's shell cannot change the result.
func startProc(name, logPath, bin string, args ...string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = childEnv()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	return p, nil
}

func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		upper := strings.ToUpper(name)
		if strings.HasPrefix(upper, "REGPROXY_") || strings.HasSuffix(upper, "_PROXY") ||
			upper == "REGISTRIES" || upper == "MANIFEST_CACHE_DEFAULT_TIME" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// stop ends the process with SIGTERM, then SIGKILL after stopGrace. It is
// idempotent and waits for the exit.
func (p *proc) stop() {
	p.stopped.Do(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(stopGrace):
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// running reports whether the process has not exited yet.
func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// waitReady polls ready until it succeeds, the process exits, ctx ends or
// startTimeout passes.
func (p *proc) waitReady(ctx context.Context, ready func(context.Context) error) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := ready(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %v\n%s", p.name, startTimeout, err, p.tail())
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited while starting: %v\n%s", p.name, p.err, p.tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

// tail is the end of the process's log, less regproxy's INFO lines (its
// access log in the soak), for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 1<<20 {
		b = b[len(b)-1<<20:]
		b = b[bytes.IndexByte(b, '\n')+1:] // from a line's start
	}
	var keep []string
	for line := range strings.Lines(string(b)) {
		if !strings.Contains(line, " level=INFO ") {
			keep = append(keep, line)
		}
	}
	s := strings.TrimSpace(strings.Join(keep, ""))
	if len(s) > 2048 {
		s = s[len(s)-2048:]
		s = s[strings.IndexByte(s, '\n')+1:] // from a line's start
	}
	return s
}

// regproxy is a running `regproxy serve`.
type regproxy struct {
	*proc
	addr  string         // the proxy port, 127.0.0.1:PORT
	roots *x509.CertPool // regproxy's CA: the only root its clients trust
}

// rpOptions are the flags that differ between the regproxy processes the
// bench starts.
type rpOptions struct {
	logLevel    string   // --log-level
	manifestTTL string   // --manifest-ttl
	extra       []string // more flags, e.g. --storage azure and its own
}

// defaultRP is the regproxy of scenarios a–e: the access log on, as by
// default (the nginx peer logs too), and tags cached for an hour, so that
// tag hits never revalidate.
var defaultRP = rpOptions{logLevel: "info", manifestTTL: "1h"}

// startRegproxy serves regproxy with a fresh data dir under dir, intercepting
// the upstream, and waits until it is healthy and has handed out its CA.
func startRegproxy(ctx context.Context, bin, dir string, up *upstream, upstreamCA string, opts rpOptions) (*regproxy, error) {
	data, err := os.MkdirTemp(dir, "regproxy-data-")
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		args := append([]string{"serve", "--listen", addr, "--data-dir", data,
			"--log-level", opts.logLevel, "--registries", upstreamHost, "--resolve", up.host() + "=" + up.addr(),
			"--upstream-ca", upstreamCA, "--manifest-ttl", opts.manifestTTL}, opts.extra...)
		p, err := startProc("regproxy", data+".log", bin, args...)
		if err != nil {
			return nil, err
		}
		rp := &regproxy{proc: p, addr: addr}
		if err = p.waitReady(ctx, rp.loadCA); err == nil {
			return rp, nil
		}
		// Only a child that exited by itself (its port was taken) is retried.
		exited := !p.running()
		p.stop()
		if !exited || attempt == startAttempts || ctx.Err() != nil {
			return nil, err
		}
	}
}

// loadCA fetches regproxy's CA from its proxy port.
func (rp *regproxy) loadCA(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+rp.addr+"/ca.crt", nil)
	if err != nil {
		return err
	}
	c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	pem, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /ca.crt: %s, %v", resp.Status, err)
	}
	rp.roots = x509.NewCertPool()
	if !rp.roots.AppendCertsFromPEM(pem) {
		return errors.New("GET /ca.crt: no certificate")
	}
	return nil
}

// peakRSS is the process's peak resident set size (VmHWM), in bytes.
func (p *proc) peakRSS() (int64, error) {
	st, err := p.status()
	return st.hwm, err
}

// procStatus is what /proc/PID/status says of a process's memory and
// threads. regproxy exposes no goroutine count; threads and open files
// (fds) are what the bench can see from outside.
type procStatus struct {
	rss     int64 // VmRSS, bytes
	hwm     int64 // VmHWM, the peak of VmRSS, bytes
	threads int64
}

// status reads /proc/PID/status.
func (p *proc) status() (procStatus, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return procStatus{}, err
	}
	var st procStatus
	var found int
	for line := range strings.Lines(string(b)) {
		name, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		switch {
		case err != nil:
		case name == "VmRSS":
			st.rss, found = n<<10, found+1
		case name == "VmHWM":
			st.hwm, found = n<<10, found+1
		case name == "Threads":
			st.threads, found = n, found+1
		}
	}
	if found != 3 {
		return st, errors.New("no VmRSS, VmHWM or Threads in /proc/PID/status")
	}
	return st, nil
}

// fds counts the process's open file descriptors, or -1.
func (p *proc) fds() int {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	return len(entries)
}

// cpuTime is the CPU time (user and system) the process has used so far,
// or 0 where /proc does not say.
func (p *proc) cpuTime() time.Duration { return pidCPUTime(p.cmd.Process.Pid) }

// statFields are the fields of /proc/PID/stat after the parenthesised
// command name, so that field 3 (state) is at index 0; nil where /proc
// does not say.
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.Fields(rest)
}

// pidCPUTime is the CPU time of pid: utime and stime, fields 14 and 15,
// in clock ticks of 1/100 s.
func pidCPUTime(pid int) time.Duration {
	f := statFields(pid)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// switches is the process's context switches so far, of all its threads.
func (p *proc) switches() int64 { return pidSwitches(p.cmd.Process.Pid) }

// pidSwitches sums the voluntary and involuntary context switches of
// every thread of pid, from /proc: each costs a trip through the kernel's
// scheduler, which on a loaded two-core node is where a small response's
// time goes.
func pidSwitches(pid int) int64 {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var total int64
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue // the thread ended
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			name, value, _ := strings.Cut(line, ":")
			if name == "voluntary_ctxt_switches" || name == "nonvoluntary_ctxt_switches" {
				n, _ := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
				total += n
			}
		}
	}
	return total
}

// startBaseline serves file with the plain TLS server and waits until it
// accepts connections. It returns the process and its address.
func startBaseline(ctx context.Context, bin, dir string, p *pki, file string) (*proc, string, error) {
	for attempt := 1; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			return nil, "", err
		}
		bp, err := startProc("baseline", filepath.Join(dir, "baseline.log"), bin,
			"-listen", addr, "-cert", p.crtFile, "-key", p.keyFile, "-file", file)
		if err != nil {
			return nil, "", err
		}
		if err = bp.waitReady(ctx, func(context.Context) error { return dialOnce(addr) }); err == nil {
			return bp, addr, nil
		}
		exited := !bp.running()
		bp.stop()
		if !exited || attempt == startAttempts || ctx.Err() != nil {
			return nil, "", err
		}
	}
}

func dialOnce(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
