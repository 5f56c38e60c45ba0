package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The client matrix runs real programs: daemons that live as long as their
// test (regproxy, containerd, dockerd) and commands that must finish within
// a bound (ctr, docker, podman, curl, skopeo). These are their helpers: start
// in a process group, wait until ready, run with a timeout, stop.

// Bounds of the waits for a starting daemon.
const (
	pollTries    = 100
	pollInterval = 50 * time.Millisecond
	stopTimeout  = 5 * time.Second
)

// proc is a daemon a test runs in the background, as the helpers below see
// it. Its owner keeps exited and err in fields of its own, which startProc
// sets.
type proc struct {
	name   string          // for messages: "containerd"
	pid    int             // 0 when only waited for, never signalled
	group  bool            // pid leads a process group of its own; signals go to all of it
	exited <-chan struct{} // closed once the process has exited
	err    *error          // Wait's result, valid once exited is closed
}

// startProc starts cmd, in a process group of its own when group, and
// reaps it in the background: when it exits, *err is set to Wait's result
// and exited is closed. Stopping it is the caller's.
func startProc(t *testing.T, name string, cmd *exec.Cmd, group bool, exited chan struct{}, err *error) proc {
	t.Helper()
	if group {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { *err = cmd.Wait(); close(exited) }()
	return proc{name: name, pid: cmd.Process.Pid, group: group, exited: exited, err: err}
}

// signal sends sig to the process, or to its whole group.
func (p proc) signal(sig syscall.Signal) error {
	switch {
	case p.pid <= 0: // kill(0) and kill(-1) would reach the test itself
		return errors.New(p.name + ": no process to signal")
	case p.group:
		return syscall.Kill(-p.pid, sig)
	}
	return syscall.Kill(p.pid, sig)
}

// stop sends SIGTERM, and SIGKILL if the process has not exited within
// timeout. A daemon must outlive its test: one that exited before stop is
// an error, and so is one that outlives timeout. stop reports whether the
// process exited on SIGTERM; only then does *p.err tell how it took it.
func (p proc) stop(t *testing.T, timeout time.Duration) bool {
	t.Helper()
	select {
	case <-p.exited:
		t.Errorf("%s exited before the test ended: %v", p.name, *p.err)
		return false
	default:
	}
	if err := p.signal(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM %s: %v", p.name, err)
	}
	select {
	case <-p.exited:
		return true
	case <-time.After(timeout):
		t.Errorf("%s still running %v after SIGTERM; killing it", p.name, timeout)
		p.signal(syscall.SIGKILL)
		<-p.exited
		return false
	}
}

// waitReady calls ready every interval until it returns nil. It fails the
// test if the process exits first, or if timeout passes; ready's context
// ends then too.
func (p proc) waitReady(t *testing.T, timeout, interval time.Duration, ready func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	for {
		err := ready(ctx)
		if err == nil {
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("%s exited while starting: %v", p.name, *p.err)
		case <-ctx.Done():
			t.Fatalf("%s not ready after %v: %v", p.name, timeout, err)
		case <-time.After(interval):
		}
	}
}

// groupCmd returns a command that runs in its own process group and, when
// ctx ends, is killed with its whole group, so no helper it forked can
// outlive the test. WaitDelay bounds Wait if such a helper keeps the
// output pipe open.
func groupCmd(ctx context.Context, path string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
	cmd.WaitDelay = stopTimeout
	return cmd
}

// timedCmd is groupCmd under a context that also ends after timeout. Call
// cancel once the command has run.
func timedCmd(ctx context.Context, timeout time.Duration, path string, args ...string) (cmd *exec.Cmd, cancel context.CancelFunc) {
	ctx, cancel = context.WithTimeout(ctx, timeout)
	return groupCmd(ctx, path, args...), cancel
}

// killLeftovers kills whatever a finished groupCmd left in its process
// group, and fails the test if there was anything: a command that forks no
// daemon leaves its group empty.
func killLeftovers(t *testing.T, name string, cmd *exec.Cmd) {
	t.Helper()
	if cmd.Process == nil {
		return
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err == nil {
		t.Errorf("%s left processes behind; killed them", name)
	} else if !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill %s's process group: %v", name, err)
	}
}

// syncBuffer is a bytes.Buffer safe for the writer goroutines of exec.Cmd
// and a reading test.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
