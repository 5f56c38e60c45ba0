package fill_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/fill"
)

// fullDisk is a store whose fills' spool files share free bytes, like a
// disk: a write that crosses the limit writes the part that fits, as
// write(2) does, and then fails with err (ENOSPC, or EFBIG for a file size
// limit).
type fullDisk struct {
	cachestore.Store
	free atomic.Int64
	err  syscall.Errno
	// refill, when positive, is the room there is again right after a
	// write failed: another process freed space.
	refill int64
}

func newFullDisk(store cachestore.Store, free int64, err syscall.Errno) *fullDisk {
	s := &fullDisk{Store: store, err: err}
	s.free.Store(free)
	return s
}

func (s *fullDisk) CreateSpool(dir string) (fill.SpoolFile, error) {
	if s.free.Load() <= 0 {
		return nil, &os.PathError{Op: "open", Path: dir, Err: s.err}
	}
	f, err := os.CreateTemp(dir, "fill-*")
	if err != nil {
		return nil, err
	}
	return &limitedFile{File: f, disk: s}, nil
}

// limitedFile fails writes past its disk's free bytes, having written the
// part of the buffer that fitted. Write (the file offset moves by the
// part) and WriteAt both do.
type limitedFile struct {
	*os.File
	disk *fullDisk
}

func (f *limitedFile) fit(p []byte) ([]byte, error) {
	for {
		left := f.disk.free.Load()
		k := min(int64(len(p)), max(left, 0))
		if f.disk.free.CompareAndSwap(left, left-k) {
			if k < int64(len(p)) {
				if f.disk.refill > 0 {
					f.disk.free.Store(f.disk.refill)
				}
				return p[:k], &os.PathError{Op: "write", Path: f.Name(), Err: f.disk.err}
			}
			return p, nil
		}
	}
}

func (f *limitedFile) Write(p []byte) (int, error) {
	part, err := f.fit(p)
	n, werr := f.File.Write(part)
	return n, errors.Join(werr, err)
}

func (f *limitedFile) WriteAt(p []byte, off int64) (int, error) {
	part, err := f.fit(p)
	n, werr := f.File.WriteAt(part, off)
	if werr != nil {
		return n, werr
	}
	return n, err
}

// logBuffer collects a group's log.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// counted wraps a Fetch of the whole blob from blob, counting its calls.
func counted(blob []byte, calls *atomic.Int32) fill.Fetch {
	return func(_ context.Context, off int64) (fill.Body, error) {
		calls.Add(1)
		return fill.Body{ReadCloser: io.NopCloser(bytes.NewReader(blob[off:])), Size: int64(len(blob))}, nil
	}
}

// TestSpoolWriteFailureIsNotACut is issue 9's bug: a write that fails part
// way (ENOSPC, EFBIG) must neither be resumed upstream nor shift what
// readers see. The clients get the blob, relayed; nothing is committed;
// the log names the local cause.
func TestSpoolWriteFailureIsNotACut(t *testing.T) {
	for _, tc := range []struct {
		name   string
		errno  syscall.Errno
		refill int64
		log    string
	}{
		{"disk full", syscall.ENOSPC, 0, "no space left on device"},
		{"disk full for a moment", syscall.ENOSPC, 1 << 30, "no space left on device"},
		{"file size limit", syscall.EFBIG, 0, "file too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var log logBuffer
				store := cachestore.NewMemory()
				disk := newFullDisk(store, 300_001, tc.errno) // not a multiple of any buffer
				disk.refill = tc.refill
				spool := t.TempDir()
				g := newGroupConfig(t, fill.Config{Store: disk, SpoolDir: spool, MaxResumes: 3, Logger: log.logger()})
				blob, d := randomBlob(t, 1<<20)
				var calls atomic.Int32
				pr, pw := io.Pipe()
				r1 := do(t, g, t.Context(), d, func(ctx context.Context, off int64) (fill.Body, error) {
					calls.Add(1)
					if off > 0 { // upstream would resume, if asked
						return fill.Body{ReadCloser: io.NopCloser(bytes.NewReader(blob[off:])), Size: int64(len(blob))}, nil
					}
					return fill.Body{ReadCloser: pr, Size: int64(len(blob))}, nil
				}, fill.Led)
				r2 := do(t, g, t.Context(), d, never(t), fill.Joined)
				go func() { pw.Write(blob); pw.Close() }()
				for i, r := range []io.Reader{r1, r2} {
					if got, err := readAll(t, r); err != nil || !bytes.Equal(got, blob) {
						t.Fatalf("reader %d: %d bytes, %v; want the blob, byte for byte", i, len(got), err)
					}
				}
				synctest.Wait()
				if n := calls.Load(); n != 1 {
					t.Errorf("%d upstream fetches; want 1: a local write failure is not a cut", n)
				}
				if isCommitted(store, d) {
					t.Error("a blob the spool could not hold was committed")
				}
				if !bytes.Contains([]byte(log.String()), []byte(tc.log)) {
					t.Errorf("log does not name %q:\n%s", tc.log, log.String())
				}
				r1.Close()
				r2.Close()
				if left, _ := os.ReadDir(spool); len(left) != 0 {
					t.Errorf("spool files left: %v", left)
				}
			})
		})
	}
}

func TestSpoolThatCannotBeCreatedRelays(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := cachestore.NewMemory()
		g := newGroup(t, newFullDisk(store, 0, syscall.ENOSPC), 0)
		blob, d := randomBlob(t, 100_000)
		var calls atomic.Int32
		r := do(t, g, t.Context(), d, counted(blob, &calls), fill.Led)
		if got, err := readAll(t, r); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("relayed %d bytes, %v; want the blob", len(got), err)
		}
		synctest.Wait()
		if isCommitted(store, d) || calls.Load() != 1 {
			t.Fatalf("committed %v after %d fetches; want nothing committed, 1 fetch", isCommitted(store, d), calls.Load())
		}
	})
}

// TestCachingResumesWhenSpaceReturns checks that a full disk costs no
// restart: new misses are relayed while it is full, and cached once there
// is room again.
func TestCachingResumesWhenSpaceReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := cachestore.NewMemory()
		disk := newFullDisk(store, 1000, syscall.ENOSPC)
		g := newGroup(t, disk, 0)
		blob, d := randomBlob(t, 100_000)
		var calls atomic.Int32
		for i := range 2 {
			r := do(t, g, t.Context(), d, counted(blob, &calls), fill.Led)
			if got, err := readAll(t, r); err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("miss %d on a full disk: %d bytes, %v", i, len(got), err)
			}
			r.Close()
			synctest.Wait()
		}
		if isCommitted(store, d) {
			t.Fatal("committed on a full disk")
		}
		disk.free.Store(1 << 30)
		r := do(t, g, t.Context(), d, counted(blob, &calls), fill.Led)
		readAll(t, r)
		synctest.Wait()
		if !isCommitted(store, d) {
			t.Fatal("not cached once there was room again")
		}
		if n := calls.Load(); n != 3 {
			t.Fatalf("%d fetches; want 3", n)
		}
	})
}

// relayGroup is a group whose spool takes free bytes, then relays through a
// window of 64 KiB.
func relayGroup(t *testing.T, free int64) (*fill.Group, cachestore.Store) {
	t.Helper()
	store := cachestore.NewMemory()
	return newGroupConfig(t, fill.Config{Store: newFullDisk(store, free, syscall.ENOSPC),
		RelayWindow: 64 << 10, StallTimeout: time.Minute, Timeout: time.Hour}), store
}

// TestRelayWaitsForSlowReaders checks that a relay bounds its memory by
// waiting for its readers, not by dropping bytes they need: a reader far
// slower than upstream still gets every byte.
func TestRelayWaitsForSlowReaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, _ := relayGroup(t, 10_000)
		blob, d := randomBlob(t, 1<<20)
		var calls atomic.Int32
		r := do(t, g, t.Context(), d, counted(blob, &calls), fill.Led)
		var got []byte
		buf := make([]byte, 16<<10)
		for {
			n, err := r.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("slow reader cut at byte %d: %v", len(got), err)
			}
			time.Sleep(10 * time.Second) // slow, but well within the stall timeout
		}
		if !bytes.Equal(got, blob) {
			t.Fatalf("slow reader: %d bytes that differ from the blob", len(got))
		}
	})
}

// TestRelayCutsAStalledReader checks that a reader that stops taking bytes
// holds the others for the stall timeout at most, and is then cut.
func TestRelayCutsAStalledReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, _ := relayGroup(t, 10_000)
		blob, d := randomBlob(t, 1<<20)
		var calls atomic.Int32
		start := time.Now()
		reader := do(t, g, t.Context(), d, counted(blob, &calls), fill.Led)
		stalled := do(t, g, t.Context(), d, never(t), fill.Joined)
		readN(t, stalled, 20_000) // in the window, then it stops reading
		// Not readAll: this read is meant to take a minute. synctest
		// fails the test if it never ends.
		if got, err := io.ReadAll(reader); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("the reading client: %d bytes, %v; want the blob", len(got), err)
		}
		if took := time.Since(start); took < time.Minute || took > 2*time.Minute {
			t.Errorf("the reading client waited %v; want about the stall timeout", took)
		}
		if _, err := stalled.Read(make([]byte, 1<<20)); err == nil {
			t.Fatal("the stalled reader read on; want it cut")
		}
	})
}

// TestNewCallerOfARelayFetchesForItself checks that a relay whose window
// has moved past its spool file, which a new reader cannot read from byte 0,
// is not joined: the new caller starts a fill of its own.
func TestNewCallerOfARelayFetchesForItself(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, _ := relayGroup(t, 10_000)
		blob, d := randomBlob(t, 1<<20)
		var calls atomic.Int32
		first := do(t, g, t.Context(), d, counted(blob, &calls), fill.Led)
		readN(t, first, 500_000)
		second := do(t, g, t.Context(), d, counted(blob, &calls), fill.Led)
		for i, r := range []io.Reader{second, first} {
			got, err := readAll(t, r)
			if i == 1 {
				got = append(blob[:500_000:500_000], got...)
			}
			if err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("reader %d: %d bytes, %v", i, len(got), err)
			}
		}
		if n := calls.Load(); n != 2 {
			t.Fatalf("%d fetches; want 2", n)
		}
	})
}

func TestRelayWithNoReaderLeftStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, store := relayGroup(t, 10_000)
		blob, d := randomBlob(t, 1<<20)
		var calls atomic.Int32
		r, err := g.Do(t.Context(), d, counted(blob, &calls))
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
		synctest.Wait()
		if n := g.InFlight(); n != 0 || isCommitted(store, d) {
			t.Fatalf("%d fills in flight after the relay's only reader left; want 0, nothing committed", n)
		}
	})
}
