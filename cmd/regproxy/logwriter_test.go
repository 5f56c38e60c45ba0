package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// writes records every Write it gets, as one string each.
type writes struct {
	mu  sync.Mutex // guards all
	all []string
}

func (w *writes) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all = append(w.all, string(p))
	return len(p), nil
}

func (w *writes) get() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.all...)
}

// TestLogWriterBatches: lines wait until logFlushDelay has passed since the
// first of them, then go out in one write; nothing is written before.
func TestLogWriterBatches(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var w writes
		l := newLogWriter(&w)
		defer l.Close()
		l.Write([]byte("one\n"))
		time.Sleep(logFlushDelay / 2)
		l.Write([]byte("two\n"))
		synctest.Wait()
		if got := w.get(); len(got) != 0 {
			t.Fatalf("written before the delay: %q", got)
		}
		time.Sleep(logFlushDelay / 2)
		synctest.Wait()
		if got, want := w.get(), []string{"one\ntwo\n"}; !slices.Equal(got, want) {
			t.Fatalf("after the delay: writes %q, want %q", got, want)
		}
		l.Write([]byte("three\n"))
		time.Sleep(logFlushDelay)
		synctest.Wait()
		if got, want := w.get(), []string{"one\ntwo\n", "three\n"}; !slices.Equal(got, want) {
			t.Fatalf("writes %q, want %q", got, want)
		}
	})
}

// TestLogWriterFull: a full buffer is written at once, without waiting
// for the delay.
func TestLogWriterFull(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var w writes
		l := newLogWriter(&w)
		defer l.Close()
		line := strings.Repeat("x", 99) + "\n"
		n := logBufferSize/len(line) + 1
		for range n {
			l.Write([]byte(line))
		}
		got := w.get()
		if len(got) != 1 || len(got[0]) != n*len(line) {
			t.Fatalf("%d writes (first of %d bytes); want one of all %d lines", len(got), len(first(got)), n)
		}
	})
}

// TestLogWriterClose: Close writes what waits; later writes, and writes as
// large as the buffer, go straight through, after what waited.
func TestLogWriterClose(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var w writes
		l := newLogWriter(&w)
		big := strings.Repeat("b", logBufferSize) + "\n"
		l.Write([]byte("a\n"))
		l.Write([]byte(big))
		if got, want := w.get(), []string{"a\n", big}; !slices.Equal(got, want) {
			t.Fatalf("a large write: writes %q…, want the waiting line first", got)
		}
		l.Write([]byte("c\n"))
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l.Write([]byte("d\n"))
		if got, want := w.get(), []string{"a\n", big, "c\n", "d\n"}; !slices.Equal(got, want) {
			t.Fatalf("writes %q, want %q", got, want)
		}
		time.Sleep(2 * logFlushDelay)
		synctest.Wait()
		if got := w.get(); len(got) != 4 {
			t.Fatalf("a write after Close's: %q", got[4:])
		}
	})
}

// TestLogWriterConcurrent: lines written at once from many goroutines all
// come out whole, each writer's in its order, whatever the batches.
func TestLogWriterConcurrent(t *testing.T) {
	t.Parallel()
	const writers, lines = 8, 2000
	var w writes
	l := newLogWriter(&w)
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range lines {
				fmt.Fprintf(l, "writer=%d line=%d %s\n", g, i, strings.Repeat("p", i%300))
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	next := make([]int, writers)
	for _, batch := range w.get() {
		if !strings.HasSuffix(batch, "\n") {
			t.Fatalf("a write ends inside a line: …%q", batch[max(0, len(batch)-40):])
		}
		for line := range strings.Lines(batch) {
			var g, i int
			if _, err := fmt.Sscanf(line, "writer=%d line=%d", &g, &i); err != nil || g < 0 || g >= writers {
				t.Fatalf("mangled line %q", line)
			}
			if want := "writer=" + fmt.Sprint(g) + " line=" + fmt.Sprint(i) + " " + strings.Repeat("p", i%300) + "\n"; line != want {
				t.Fatalf("line %q, want %q", line, want)
			}
			if i != next[g] {
				t.Fatalf("writer %d: line %d after line %d", g, i, next[g]-1)
			}
			next[g]++
		}
	}
	for g, n := range next {
		if n != lines {
			t.Errorf("writer %d: %d lines written, want %d", g, n, lines)
		}
	}
}

// TestRunFlushesLog: what serve logs is all on stderr when run returns, in
// order, with run's own error line last. serve logs (a warning of the CA
// key's mode), then fails (the cache is a file).
func TestRunFlushesLog(t *testing.T) {
	dataDir := t.TempDir()
	caDir := initCA(t, dataDir)
	if err := os.Chmod(filepath.Join(caDir, "ca.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "cache"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	code := run([]string{"regproxy", "serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir,
		"--log-format", "json"}, &bytes.Buffer{}, &stderr)
	if code == 0 {
		t.Fatal("serve with a file for its cache exited 0")
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[len(lines)-1], "regproxy: ") {
		t.Fatalf("stderr:\n%s\nwant log lines, then run's error line", stderr.String())
	}
	for _, line := range lines[:len(lines)-1] {
		if !strings.HasPrefix(line, "{") {
			t.Errorf("line %q before the error line is not a JSON log line", line)
		}
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}
