package tiered

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/opencontainers/go-digest"
	"go.uber.org/goleak"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/azure"
	"github.com/regproxy/regproxy/cachestore/evict"
	"github.com/regproxy/regproxy/cachestore/storetest"
	"github.com/regproxy/regproxy/internal/azuritetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(azuritetest.StopSharedAfter(m)) }

var (
	content = cachestore.Options{Kind: cachestore.Content}
	record  = cachestore.Options{Kind: cachestore.Record}
)

// azureConfig is a configuration for a new container in az, with small
// blocks, so that entries span several.
func azureConfig(az *azuritetest.Azurite) azure.Config {
	return azure.Config{AccountName: azuritetest.Account, AccountKey: azuritetest.Key,
		Endpoint: az.Endpoint, Container: az.Container(), BlockSize: 64 << 10, BlocksInFlight: 3}
}

// newStore returns a Store on cfg's container with a local tier of its
// own, closed when t ends.
func newStore(t *testing.T, cfg azure.Config) *Store {
	t.Helper()
	remote, err := azure.New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("azure.New: %v", err)
	}
	local, err := cachestore.NewDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := New(local, remote, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { s.Close() })
	return s
}

// TestConformance runs the suite with every store of a subtest a replica
// of its own: one container, and a local tier each.
func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) func() cachestore.Store {
		cfg := azureConfig(azuritetest.Shared(t))
		return func() cachestore.Store { return newStore(t, cfg) }
	})
}

func data(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*11+i>>8) ^ seed
	}
	return b
}

func put(t *testing.T, s cachestore.Store, key string, opts cachestore.Options, b []byte) {
	t.Helper()
	w, err := s.Create(t.Context(), key, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context(), digest.FromBytes(b)); err != nil {
		t.Fatal(err)
	}
}

// read reads key's entry through s with fn, and checks what it read.
func read(t *testing.T, s cachestore.Store, key string, want []byte, fn func(r cachestore.Reader) ([]byte, error)) {
	t.Helper()
	r, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("Open(%s): %v", key, err)
	}
	got, err := fn(r)
	if cerr := r.Close(); err == nil {
		err = cerr
	}
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %s: %d bytes, %v; want %d", key, len(got), err, len(want))
	}
}

func readAll(r cachestore.Reader) ([]byte, error) { return io.ReadAll(r) }

// local reports whether s's local tier holds key, once the copies in
// progress are committed.
func local(s *Store, key string) bool {
	s.wg.Wait()
	_, err := s.local.Stat(context.Background(), key)
	return err == nil
}

// TestWritesGoWhereTheyMayBeKept: a Content entry is written to both tiers,
// a Record to the remote store only.
func TestWritesGoWhereTheyMayBeKept(t *testing.T) {
	t.Parallel()
	cfg := azureConfig(azuritetest.Shared(t))
	s := newStore(t, cfg)
	blob := data(1, 300<<10)
	bk := cachestore.BlobKey(digest.FromBytes(blob))
	put(t, s, bk, content, blob)
	tag := cachestore.TagKey("ab")
	put(t, s, tag, record, []byte("record"))
	if !local(s, bk) || local(s, tag) {
		t.Errorf("in the local tier: blob %v, record %v; want true, false", local(s, bk), local(s, tag))
	}
	other := newStore(t, cfg) // another replica sees both
	read(t, other, bk, blob, readAll)
	read(t, other, tag, []byte("record"), readAll)
}

// TestReadThroughCopies checks which reads of a remote entry copy it into
// the local tier: a whole read from the first byte of a Content entry,
// and nothing else.
func TestReadThroughCopies(t *testing.T) {
	t.Parallel()
	cfg := azureConfig(azuritetest.Shared(t))
	writer := newStore(t, cfg)
	const mt = "application/vnd.oci.image.manifest.v1+json"
	blob := data(2, 300<<10+3)
	bk := cachestore.BlobKey(digest.FromBytes(blob))
	put(t, writer, bk, content, blob)
	manifest := data(3, 700)
	mk := cachestore.ManifestKey(digest.FromBytes(manifest))
	put(t, writer, mk, cachestore.Options{Kind: cachestore.Content, MediaType: mt}, manifest)
	tag := cachestore.TagKey("cd")
	put(t, writer, tag, record, []byte("a record"))
	empty := cachestore.BlobKey(digest.FromBytes(nil))
	put(t, writer, empty, content, nil)

	s := newStore(t, cfg)
	// Reads that do not copy: a HEAD, a Range, a read from the middle and
	// a client gone halfway.
	read(t, s, bk, nil, func(cachestore.Reader) ([]byte, error) { return nil, nil })
	read(t, s, bk, blob[1000:2000], func(r cachestore.Reader) ([]byte, error) {
		b := make([]byte, 1000)
		_, err := r.ReadAt(b, 1000)
		return b, err
	})
	read(t, s, bk, blob[100000:], func(r cachestore.Reader) ([]byte, error) {
		r.Seek(100000, io.SeekStart)
		return io.ReadAll(r)
	})
	read(t, s, bk, blob[:5000], func(r cachestore.Reader) ([]byte, error) {
		b := make([]byte, 5000)
		_, err := io.ReadFull(r, b)
		return b, err
	})
	read(t, s, tag, []byte("a record"), readAll)
	if local(s, bk) || local(s, tag) {
		t.Fatalf("in the local tier after partial reads: blob %v, record %v; want neither", local(s, bk), local(s, tag))
	}
	// Reads that do: whole, also after a seek back to the start (as
	// http.ServeContent does to learn the size), and an empty entry.
	read(t, s, bk, blob, func(r cachestore.Reader) ([]byte, error) {
		r.Seek(0, io.SeekEnd)
		r.Seek(0, io.SeekStart)
		return io.ReadAll(r)
	})
	read(t, s, mk, manifest, readAll)
	read(t, s, empty, nil, func(cachestore.Reader) ([]byte, error) { return nil, nil })
	for _, key := range []string{bk, mk, empty} {
		if !local(s, key) {
			t.Errorf("%s is not in the local tier after a whole read", key)
		}
	}
	r, err := s.local.Open(t.Context(), mk)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if r.MediaType() != mt {
		t.Errorf("local copy of the manifest: media type %q, want %q", r.MediaType(), mt)
	}
}

// TestConcurrentReadersCopyOnce has many readers read one remote entry at
// once: each gets the bytes, and one copy is made.
func TestConcurrentReadersCopyOnce(t *testing.T) {
	t.Parallel()
	cfg := azureConfig(azuritetest.Shared(t))
	blob := data(4, 1<<20)
	bk := cachestore.BlobKey(digest.FromBytes(blob))
	put(t, newStore(t, cfg), bk, content, blob)
	s := newStore(t, cfg)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { read(t, s, bk, blob, readAll) })
	}
	wg.Wait()
	if !local(s, bk) {
		t.Fatal("not copied into the local tier")
	}
	read(t, s, bk, blob, readAll)
}

// TestLegacyRemoteEntryNotCopied reads a blob that an earlier release put in
// Azure, whose kind is unknown: it is read from Azure and never copied.
func TestLegacyRemoteEntryNotCopied(t *testing.T) {
	t.Parallel()
	az := azuritetest.Shared(t)
	cfg := azureConfig(az)
	blob := data(5, 1000)
	bk := cachestore.BlobKey(digest.FromBytes(blob))
	s := newStore(t, cfg) // creates the container
	c, err := azblob.NewClientFromConnectionString(az.ConnectionString(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.UploadBuffer(t.Context(), cfg.Container, bk, blob, nil); err != nil {
		t.Fatal(err)
	}
	read(t, s, bk, blob, readAll)
	if local(s, bk) {
		t.Error("a remote entry of unknown kind was copied into the local tier")
	}
}

// TestLocalHitWithAzureDown stops Azurite: entries in the local tier, those
// written through the store and those copied on a read, are still served;
// a record, kept in Azure only, is not.
func TestLocalHitWithAzureDown(t *testing.T) {
	t.Parallel()
	az := azuritetest.New(t)
	cfg := azureConfig(az)
	written := data(6, 200<<10)
	wk := cachestore.BlobKey(digest.FromBytes(written))
	copied := data(7, 300<<10)
	ck := cachestore.BlobKey(digest.FromBytes(copied))
	s := newStore(t, cfg)
	put(t, s, wk, content, written)
	put(t, newStore(t, cfg), ck, content, copied)
	put(t, s, cachestore.TagKey("ef"), record, []byte("record"))
	read(t, s, ck, copied, readAll)
	if !local(s, ck) {
		t.Fatal("the blob read is not in the local tier")
	}

	az.Kill()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for key, want := range map[string][]byte{wk: written, ck: copied} {
		r, err := s.Open(ctx, key)
		if err != nil {
			t.Fatalf("Open(%s) with Azure down: %v", key, err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s with Azure down: %d bytes, %v", key, len(got), err)
		}
	}
	if r, err := s.Open(ctx, cachestore.TagKey("ef")); err == nil {
		r.Close()
		t.Error("a record was served with Azure down: it must come from Azure, the only copy kept current")
	}
	if err := az.Restart(); err != nil {
		t.Fatal(err)
	}
}

// TestLocalTierEvicted bounds the local tier with an eviction index:
// it stays under its cap, and what it evicted is read from Azure (and
// copied back).
func TestLocalTierEvicted(t *testing.T) {
	t.Parallel()
	cfg := azureConfig(azuritetest.Shared(t))
	s := newStore(t, cfg)
	const limit = 1 << 20
	ix := evict.New(s.Local(), evict.Config{MaxSize: limit, CheckEvery: 10 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ix.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var keys []string
	var blobs [][]byte
	for i := range 8 {
		b := data(byte(10+i), 300<<10)
		keys, blobs = append(keys, cachestore.BlobKey(digest.FromBytes(b))), append(blobs, b)
		put(t, s, keys[i], content, b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for ix.Stats().Bytes > limit || !ix.Stats().Loaded {
		if time.Now().After(deadline) {
			t.Fatalf("local tier holds %d bytes, over its cap of %d", ix.Stats().Bytes, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if local(s, keys[0]) || !local(s, keys[7]) {
		t.Errorf("in the local tier: oldest %v, newest %v; want the oldest evicted, the newest kept",
			local(s, keys[0]), local(s, keys[7]))
	}
	read(t, s, keys[0], blobs[0], readAll)
	if !local(s, keys[0]) {
		t.Error("an evicted blob read again was not copied back")
	}
}

// TestLocalFailureIsPassedOver breaks the local tier: writes and reads go
// on through the remote store.
func TestLocalFailureIsPassedOver(t *testing.T) {
	t.Parallel()
	cfg := azureConfig(azuritetest.Shared(t))
	s := newStore(t, cfg)
	blob := data(20, 10000)
	bk := cachestore.BlobKey(digest.FromBytes(blob))
	// A file where the local tier's directories would go.
	if err := os.WriteFile(filepath.Join(s.local.SpoolDir(), "..", "blobs"), []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	put(t, s, bk, content, blob)
	read(t, s, bk, blob, readAll)
	read(t, newStore(t, cfg), bk, blob, readAll)
	if local(s, bk) {
		t.Error("the entry is in a broken local tier")
	}
}
