package proxy_test

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// fsizeChild, set in the environment, makes TestFileSizeLimitChild run:
// in a process of its own, since the limit it sets cannot be undone.
const fsizeChild = "REGPROXY_TEST_FSIZE_CHILD"

// TestFileSizeLimitDuringFill checks a fill against a real file size limit
// (RLIMIT_FSIZE, what `ulimit -f` and systemd's LimitFSIZE set): writes
// past it fail with EFBIG (and SIGXFSZ, which Go ignores). It runs
// TestFileSizeLimitChild in a child process of this test binary.
func TestFileSizeLimitDuringFill(t *testing.T) {
	if os.Getenv(fsizeChild) != "" {
		return // this is the child: TestFileSizeLimitChild does the work
	}
	t.Parallel()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestFileSizeLimitChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), fsizeChild+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestFileSizeLimitChild")) {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// TestFileSizeLimitChild runs a proxy whose files may not grow past
// 256 KiB, and asks it for a 1 MiB blob: the client gets the blob, relayed,
// the log says why it was not cached, and it is not.
func TestFileSizeLimitChild(t *testing.T) {
	if os.Getenv(fsizeChild) == "" {
		return // runs only in TestFileSizeLimitDuringFill's child process
	}
	const limit = 256 << 10
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: limit, Max: limit}); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	e.stop()
	log := &syncBuffer{}
	e.logTo = log
	e.start()
	d, want := oneLayer(t, e, 1<<20)
	c := e.client()
	for i := range 2 {
		e.up.ResetCounts()
		if got, err := fetchBlob(e, c, d); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("pull %d: %d bytes, %v; want the blob relayed", i, len(got), err)
		}
		if n := e.up.Count("GET blob"); n != 1 {
			t.Fatalf("pull %d: %d upstream blob GETs; want 1 (relayed, not cached, not resumed)", i, n)
		}
	}
	if !strings.Contains(log.String(), "file too large") {
		t.Fatalf("the log does not name the file size limit:\n%s", log.String())
	}
	waitNoSpoolFiles(t, e)
}
