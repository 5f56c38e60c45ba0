package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// perfEnv names a directory: when set, each scenario records a CPU profile
// of the regproxy process with perf(1) into DIR/<scenario>.perf.data, and
// scenario a one of the baseline server too (read them with
// `perf report -i FILE`). It needs nothing from regproxy: perf
// samples the process from outside, and Go keeps frame pointers, so
// `perf record -g` gets whole call stacks.
const perfEnv = "REGPROXY_BENCH_PERF"

// perfFrequency is the sampling rate, in Hz.
const perfFrequency = "997"

// profile starts perf on p for the scenario name and returns the function
// that stops it. Without perfEnv, or without perf, it does nothing.
func (b *bench) profile(p *proc, name string) (stop func()) {
	dir := os.Getenv(perfEnv)
	if dir == "" {
		return func() {}
	}
	out := filepath.Join(dir, name+".perf.data")
	cmd := exec.Command("perf", "record", "-F", perfFrequency, "-g", "-p", fmt.Sprint(p.cmd.Process.Pid), "-o", out)
	if err := os.MkdirAll(dir, 0o755); err == nil {
		err = cmd.Start()
	}
	if cmd.Process == nil {
		b.logf("warning: %s set but perf did not start; no profile of %s", perfEnv, name)
		return func() {}
	}
	time.Sleep(200 * time.Millisecond) // perf attaches asynchronously
	return func() {
		cmd.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(stopGrace):
			cmd.Process.Kill()
			<-done
		}
		b.logf("  profile of %s: %s", p.name, out)
	}
}
