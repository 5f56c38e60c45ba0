package azure

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// counter counts the requests of a store and the bytes of their answers.
type counter struct {
	inner     http.RoundTripper
	requests  atomic.Int64
	bodyBytes atomic.Int64 // Content-Length of the answers
}

func (c *counter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.requests.Add(1)
	resp, err := c.inner.RoundTrip(r)
	if err == nil && resp.ContentLength > 0 {
		c.bodyBytes.Add(resp.ContentLength)
	}
	return resp, err
}

func (c *counter) CloseIdleConnections() {
	c.inner.(interface{ CloseIdleConnections() }).CloseIdleConnections()
}

// count makes s count its requests from now on. Call it before s is used
// by more than one goroutine.
func count(s *Store) *counter {
	c := &counter{inner: s.hc.Transport}
	s.hc.Transport = c
	return c
}

// TestOpenSmallEntryOneRequest checks that a manifest with its media type
// is one request, and that opening a large blob without reading it (a
// HEAD) downloads little.
func TestOpenSmallEntryOneRequest(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.BlockSize = 0 // the default: 4 MiB
	s := newStore(t, cfg)
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	key := cachestore.ManifestKey(digest.FromBytes(manifest))
	w, err := s.Create(t.Context(), key, cachestore.Options{Kind: cachestore.Content, MediaType: "application/vnd.oci.image.manifest.v1+json"})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(manifest)
	if err := w.Commit(t.Context(), digest.FromBytes(manifest)); err != nil {
		t.Fatal(err)
	}
	big := data(10, 3<<20)
	bigKey := cachestore.BlobKey(digest.FromBytes(big))
	put(t, s, bigKey, big)

	c := count(s)
	r, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, manifest) {
		t.Errorf("manifest read = %q, %v", got, err)
	}
	if mt := r.MediaType(); mt != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("MediaType = %q", mt)
	}
	if n := c.requests.Load(); n != 1 {
		t.Errorf("Open and read of a manifest made %d requests, want 1", n)
	}

	r, err = s.Open(t.Context(), bigKey)
	if err != nil {
		t.Fatal(err)
	}
	if r.Size() != int64(len(big)) {
		t.Errorf("Size = %d, want %d", r.Size(), len(big))
	}
	r.Close()
	if n := c.bodyBytes.Load() - int64(len(manifest)); n > firstChunk {
		t.Errorf("Open and Close of a %d-byte blob downloaded %d bytes, want at most %d", len(big), n, firstChunk)
	}
}

// TestSequentialReadDownloadsOnce reads a blob through: every byte is
// downloaded once, in two requests (the head, then the rest).
func TestSequentialReadDownloadsOnce(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	b := data(11, 3<<20+123)
	key := cachestore.BlobKey(digest.FromBytes(b))
	put(t, s, key, b)
	c := count(s)
	for _, bufSize := range []int{1000, 32 << 10, 1 << 20} {
		before, requests := c.bodyBytes.Load(), c.requests.Load()
		r, err := s.Open(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(bufReader{r, bufSize})
		r.Close()
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("read with %d-byte buffers: %d bytes, %v; want the %d written", bufSize, len(got), err, len(b))
		}
		if n := c.bodyBytes.Load() - before; n != int64(len(b)) {
			t.Errorf("read with %d-byte buffers downloaded %d bytes, want %d", bufSize, n, len(b))
		}
		if n := c.requests.Load() - requests; n != 2 {
			t.Errorf("read with %d-byte buffers made %d requests, want 2", bufSize, n)
		}
	}
}

// bufReader reads through r at most n bytes at a time.
type bufReader struct {
	r io.Reader
	n int
}

func (b bufReader) Read(p []byte) (int, error) { return b.r.Read(p[:min(len(p), b.n)]) }

// TestReaderRandomAccess compares a reader with bytes.Reader over random
// seeks, reads and ReadAts in and out of the head.
func TestReaderRandomAccess(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	b := data(12, 4*firstChunk+17)
	key := cachestore.BlobKey(digest.FromBytes(b))
	put(t, s, key, b)
	r, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	want := bytes.NewReader(b)
	rng := rand.New(rand.NewPCG(1, 2))
	size := int64(len(b))
	for i := range 300 {
		buf, wbuf := make([]byte, rng.IntN(firstChunk+firstChunk/2)), make([]byte, 0)
		wbuf = append(wbuf, buf...)
		var n, wn int
		var err, werr error
		var op string
		switch rng.IntN(4) {
		case 0:
			off, whence := rng.Int64N(size+100), rng.IntN(3)
			if whence != io.SeekStart {
				off -= size / 2
			}
			op = "Seek"
			pos, err := r.Seek(off, whence)
			wpos, werr := want.Seek(off, whence)
			if pos != wpos || (err == nil) != (werr == nil) {
				t.Fatalf("op %d, Seek(%d, %d) = %d, %v; bytes.Reader %d, %v", i, off, whence, pos, err, wpos, werr)
			}
			continue
		case 1:
			off := rng.Int64N(size + 100)
			op = "ReadAt " + itoa(int(off))
			n, err = r.ReadAt(buf, off)
			wn, werr = want.ReadAt(wbuf, off)
		default:
			op = "Read"
			n, err = io.ReadFull(r, buf)
			wn, werr = io.ReadFull(want, wbuf)
		}
		if n != wn || (err == nil) != (werr == nil) || !bytes.Equal(buf[:max(n, 0)], wbuf[:max(wn, 0)]) {
			t.Fatalf("op %d, %s of %d bytes: got %d, %v; bytes.Reader %d, %v", i, op, len(buf), n, err, wn, werr)
		}
	}
}

// TestRecordReplacedWhileReading replaces a record under an open reader:
// the reader fails rather than mix the two.
func TestRecordReplacedWhileReading(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	key := cachestore.TagKey("feed")
	first := data(13, 2*firstChunk)
	putOpts(t, s, key, record, first)
	r, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 10)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	putOpts(t, s, key, record, data(14, 2*firstChunk))
	_, err = io.ReadAll(r)
	if err == nil || !strings.Contains(err.Error(), "replaced since Open") {
		t.Errorf("read on after the record was replaced: %v, want an error saying so", err)
	}
}

// TestReadAfterDelete deletes an entry under an open reader.
func TestReadAfterDelete(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	b := data(15, 2*firstChunk)
	key := cachestore.BlobKey(digest.FromBytes(b))
	put(t, s, key, b)
	r, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := s.Delete(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(r); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("read on after Delete: %v, want ErrNotFound", err)
	}
	if _, err := r.Read(make([]byte, 1)); err == nil {
		t.Error("Read after a failed read = nil error, want the failure again")
	}
}

// BenchmarkRead compares a reader with the SDK's single-stream download of
// the same blob, and with the alternative the reader does not take: ranged
// downloads of CHUNK bytes, AHEAD of them requested at once, each read in
// turn (the kernel's socket buffers hold what is read ahead), 1 and 8
// streams at a time, with the default sizes. Every read is 32 KiB, as
// http.ServeContent reads.
func BenchmarkRead(b *testing.B) {
	cfg := testConfig(b)
	cfg.BlockSize, cfg.BlocksInFlight = 0, 0
	s := newStore(b, cfg)
	blob := data(18, 64<<20)
	key := cachestore.BlobKey(digest.FromBytes(blob))
	w, err := s.Create(b.Context(), key, content)
	if err != nil {
		b.Fatal(err)
	}
	w.Write(blob)
	if err := w.Commit(b.Context(), digest.FromBytes(blob)); err != nil {
		b.Fatal(err)
	}
	reads := []struct {
		name string
		read func() (int64, error)
	}{
		{"Store", func() (int64, error) {
			r, err := s.Open(b.Context(), key)
			if err != nil {
				return 0, err
			}
			defer r.Close()
			return copy32K(r)
		}},
		{"DownloadStream", func() (int64, error) {
			resp, err := s.c.NewBlobClient(key).DownloadStream(b.Context(), nil)
			if err != nil {
				return 0, err
			}
			defer resp.Body.Close()
			return copy32K(resp.Body)
		}},
		{"Ranges/4MiBx3", func() (int64, error) { return readRanges(b, s, key, int64(len(blob)), 4<<20, 3) }},
		{"Ranges/16MiBx2", func() (int64, error) { return readRanges(b, s, key, int64(len(blob)), 16<<20, 2) }},
	}
	for _, streams := range []int{1, 8} {
		for _, rd := range reads {
			b.Run(rd.name+"/streams="+itoa(streams), func(b *testing.B) {
				b.SetBytes(int64(len(blob) * streams))
				for b.Loop() {
					errs := make(chan error, streams)
					for range streams {
						go func() {
							n, err := rd.read()
							if err == nil && n != int64(len(blob)) {
								err = io.ErrUnexpectedEOF
							}
							errs <- err
						}()
					}
					for range streams {
						if err := <-errs; err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}

// copy32K reads r to its end 32 KiB at a time.
func copy32K(r io.Reader) (int64, error) {
	return io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, make([]byte, 32<<10))
}

// readRanges reads key's size bytes in ranged downloads of chunk bytes,
// ahead of them requested before the first is read, and a new one each time
// one is done with.
func readRanges(b testing.TB, s *Store, key string, size, chunk int64, ahead int) (int64, error) {
	bc := s.c.NewBlobClient(key)
	type result struct {
		body io.ReadCloser
		err  error
	}
	var queue []chan result
	var next int64
	request := func() {
		c := make(chan result, 1)
		off, n := next, min(chunk, size-next)
		next += n
		go func() {
			resp, err := bc.DownloadStream(b.Context(), &blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: off, Count: n}})
			c <- result{resp.Body, err}
		}()
		queue = append(queue, c)
	}
	for len(queue) < ahead && next < size {
		request()
	}
	var total int64
	var errs []error
	for len(queue) > 0 {
		r := <-queue[0]
		queue = queue[1:]
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		if next < size && errs == nil {
			request()
		}
		n, err := copy32K(r.body)
		r.body.Close()
		total += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// TestKind reads back the kind each entry was committed as, for a local
// tier to tell what it may keep; a blob an earlier release wrote has none.
func TestKind(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	s := newStore(t, cfg)
	for _, tt := range []struct {
		opts cachestore.Options
		size int
	}{
		{content, 10}, {record, 10}, {content, 3 * cfg.BlockSize}, {record, 3 * cfg.BlockSize},
		{cachestore.Options{Kind: cachestore.Content, MediaType: "text/plain"}, 0},
	} {
		b := data(20, tt.size)
		key := cachestore.TagKey(fmt.Sprintf("%s%d", tt.opts.Kind, tt.size))
		putOpts(t, s, key, tt.opts, b)
		r, err := s.Open(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
		if got := r.(cachestore.KindReader).Kind(); got != tt.opts.Kind {
			t.Errorf("%s: Kind = %v, want %v", key, got, tt.opts.Kind)
		}
	}
	legacy := cachestore.BlobKey(digest.FromString("legacy"))
	if _, err := s.c.NewBlockBlobClient(legacy).UploadBuffer(t.Context(), []byte("legacy"), nil); err != nil {
		t.Fatal(short(err))
	}
	r, err := s.Open(t.Context(), legacy)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if got := r.(cachestore.KindReader).Kind(); got != 0 {
		t.Errorf("a blob without metadata: Kind = %v, want 0", got)
	}
}
