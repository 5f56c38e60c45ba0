package azure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"

	"github.com/regproxy/regproxy/cachestore"
)

// firstChunk bounds the download that Open makes, and the first one after a
// Seek: enough for any manifest or record in one request, and little to
// waste when a HEAD or a small Range request reads nothing more.
const firstChunk = 256 << 10

var errClosed = errors.New("cachestore/azure: reader closed")

var _ cachestore.KindReader = (*reader)(nil)

// Open implements cachestore.Store. It downloads the entry's first bytes
// with its properties in one request, so that a small entry costs one round
// trip. ctx bounds Open only: the reader's later downloads end at Close.
func (s *Store) Open(ctx context.Context, key string) (cachestore.Reader, error) {
	b, err := s.blob(key)
	if err != nil {
		return nil, err
	}
	r := &reader{key: key, b: b}
	if err := r.open(ctx); err != nil {
		return nil, err
	}
	r.ctx, r.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return r, nil
}

// reader reads an entry in at most two requests per sequential pass: a
// small range first (which is all of most manifests and records), then, if
// the caller reads on, one download of the rest, read as the caller reads.
// One download needs no buffer of ours, since the kernel's socket buffer
// reads ahead of the caller, and each request costs far more than its
// bytes. Ranged reads with read-ahead were measured against it on Azurite
// (2 CPUs, 2026-12-03; BenchmarkRead and the bench's scenario g, see
// BENCHMARKS.md) and lost or tied: in 4 MiB ranges, 3 requested at once,
// 0.3 to 0.5 times the throughput of one download; in 16 MiB ranges, 2 at
// once, 0.85 to 0.95 times with 1 stream and 0.6 to 0.8 with 8; end to
// end through regproxy, 16 MiB ranges 3 at once and 32 MiB ranges 2 at
// once 0.94 to 1.05 times (noise), and a read-ahead goroutine filling four
// 256 KiB buffers 0.84 to 0.88 times. Read and Seek are meant for one
// goroutine at a time, like an *os.File's; ReadAt may run concurrently
// with them and itself.
type reader struct {
	key       string
	b         *blob.Client
	size      int64
	etag      azcore.ETag // of the entry opened: a record replaced since is not mixed in
	mediaType string
	kind      cachestore.Kind

	ctx    context.Context // of every download after Open; canceled by Close
	cancel context.CancelFunc

	pos       int64         // of Read and Seek
	head      []byte        // the entry's bytes from headOff, downloaded whole
	headOff   int64         //
	stream    io.ReadCloser // the download of the rest of the entry from streamOff; nil if none
	streamOff int64         //
}

// open makes Open's first download, learning the entry's size, ETag and
// media type, and keeps the bytes as the head.
func (r *reader) open(ctx context.Context) error {
	resp, err := r.b.DownloadStream(ctx, &blob.DownloadStreamOptions{
		Range: blob.HTTPRange{Count: firstChunk},
	})
	if bloberror.HasCode(err, bloberror.InvalidRange) {
		return r.openEmpty(ctx)
	}
	if err != nil {
		return opErr("open", r.key, err)
	}
	defer resp.Body.Close()
	r.etag, r.mediaType, r.kind = etagOf(resp.ETag), mediaTypeOf(resp.ContentType), kindOf(resp.Metadata)
	if resp.ContentLength == nil || *resp.ContentLength > firstChunk {
		return fmt.Errorf("cachestore/azure: open %s: asked for %d bytes, got a Content-Length of %v",
			r.key, firstChunk, resp.ContentLength)
	}
	n := *resp.ContentLength
	r.size = n
	if resp.ContentRange != nil {
		if r.size, err = totalSize(*resp.ContentRange); err != nil {
			return fmt.Errorf("cachestore/azure: open %s: %w", r.key, err)
		}
	}
	r.head = make([]byte, n)
	if _, err := io.ReadFull(resp.Body, r.head); err != nil {
		return fmt.Errorf("cachestore/azure: open %s: %w", r.key, short(err))
	}
	return nil
}

// openEmpty learns the properties of an entry whose first range did not
// exist: Azure answers a Range request for an empty blob with 416.
func (r *reader) openEmpty(ctx context.Context) error {
	p, err := r.b.GetProperties(ctx, nil)
	if err != nil {
		return opErr("open", r.key, err)
	}
	if p.ContentLength == nil || *p.ContentLength != 0 {
		return fmt.Errorf("cachestore/azure: open %s: range 0 not satisfiable, yet the entry is not empty", r.key)
	}
	r.etag, r.mediaType, r.kind = etagOf(p.ETag), mediaTypeOf(p.ContentType), kindOf(p.Metadata)
	return nil
}

// totalSize parses the size out of a Content-Range "bytes FIRST-LAST/SIZE".
func totalSize(contentRange string) (int64, error) {
	_, size, ok := strings.Cut(contentRange, "/")
	n, err := strconv.ParseInt(size, 10, 64)
	if !ok || err != nil || n < 0 {
		return 0, fmt.Errorf("bad Content-Range %q", contentRange)
	}
	return n, nil
}

// Size implements cachestore.Reader.
func (r *reader) Size() int64 { return r.size }

// MediaType implements cachestore.Reader.
func (r *reader) MediaType() string { return r.mediaType }

// Kind implements cachestore.KindReader.
func (r *reader) Kind() cachestore.Kind { return r.kind }

// Read implements io.Reader: from the head if it holds pos, else from the
// stream if it is at pos. Otherwise, a Read right after the head opens the
// stream, and any other downloads a new head at pos.
func (r *reader) Read(p []byte) (int, error) {
	if r.ctx.Err() != nil {
		return 0, errClosed
	}
	if r.pos >= r.size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	headEnd := r.headOff + int64(len(r.head))
	if r.pos >= r.headOff && r.pos < headEnd {
		n := copy(p, r.head[r.pos-r.headOff:])
		r.pos += int64(n)
		return n, nil
	}
	if r.stream == nil || r.streamOff != r.pos {
		r.closeStream()
		if r.pos != headEnd {
			if err := r.fetchHead(); err != nil {
				return 0, err
			}
			return r.Read(p)
		}
		if err := r.openStream(); err != nil {
			return 0, err
		}
	}
	return r.readStream(p)
}

// fetchHead downloads up to firstChunk bytes at pos as the new head.
func (r *reader) fetchHead() error {
	n := min(firstChunk, r.size-r.pos)
	if int64(cap(r.head)) < n {
		r.head = make([]byte, n)
	}
	r.head, r.headOff = r.head[:0], r.pos // empty until the download is whole
	if err := r.download(r.ctx, r.pos, r.head[:n]); err != nil {
		return err
	}
	r.head = r.head[:n]
	return nil
}

// openStream starts the download of the rest of the entry, from pos. A
// connection that breaks mid-body is resumed where it stopped, as long as
// the entry is the one opened.
func (r *reader) openStream() error {
	resp, err := r.b.DownloadStream(r.ctx, &blob.DownloadStreamOptions{
		Range:            blob.HTTPRange{Offset: r.pos, Count: r.size - r.pos},
		AccessConditions: r.ifMatch(),
	})
	if err != nil {
		return r.readErr(r.pos, err)
	}
	r.stream = resp.NewRetryReader(r.ctx, &blob.RetryReaderOptions{MaxRetries: 3, EarlyCloseAsError: true})
	r.streamOff = r.pos
	r.head = nil // the stream replaces it; a Seek back downloads it again
	return nil
}

// readStream reads from the stream, which is at pos.
func (r *reader) readStream(p []byte) (int, error) {
	n, err := r.stream.Read(p)
	r.pos += int64(n)
	r.streamOff = r.pos
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, io.EOF) && r.pos == r.size:
		r.closeStream()
		return n, nil // the next Read reports io.EOF
	case errors.Is(err, io.EOF):
		err = io.ErrUnexpectedEOF
	}
	off := r.pos
	r.closeStream()
	return n, r.readErr(off, err)
}

func (r *reader) closeStream() {
	if r.stream != nil {
		r.stream.Close()
		r.stream = nil
	}
}

// Seek implements io.Seeker. Moving past the end is allowed; Read then
// reports io.EOF.
func (r *reader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.pos
	case io.SeekEnd:
		offset += r.size
	default:
		return 0, fmt.Errorf("cachestore/azure: seek: invalid whence %d", whence)
	}
	if offset < 0 {
		return 0, fmt.Errorf("cachestore/azure: seek to negative position %d", offset)
	}
	r.pos = offset
	return offset, nil
}

// ReadAt implements io.ReaderAt with one download of exactly the bytes
// asked for, apart from Read's.
func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	if r.ctx.Err() != nil {
		return 0, errClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("cachestore/azure: read at negative offset %d", off)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), r.size-off))
	if n > 0 {
		if err := r.download(r.ctx, off, p[:n]); err != nil {
			return 0, err
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Close implements io.Closer. It ends the download in flight, if any.
func (r *reader) Close() error {
	if r.ctx.Err() != nil {
		return nil
	}
	r.cancel()
	r.closeStream()
	return nil
}

// download fills p with the entry's bytes from off.
func (r *reader) download(ctx context.Context, off int64, p []byte) error {
	resp, err := r.b.DownloadStream(ctx, &blob.DownloadStreamOptions{
		Range:            blob.HTTPRange{Offset: off, Count: int64(len(p))},
		AccessConditions: r.ifMatch(),
	})
	if err != nil {
		return r.readErr(off, err)
	}
	body := resp.NewRetryReader(ctx, &blob.RetryReaderOptions{MaxRetries: 3, EarlyCloseAsError: true})
	defer body.Close()
	if _, err := io.ReadFull(body, p); err != nil {
		return r.readErr(off, err)
	}
	return nil
}

// ifMatch makes every download after Open's read the entry Open found.
func (r *reader) ifMatch() *blob.AccessConditions {
	return &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: &r.etag}}
}

// readErr is the error of a download at off that failed with err.
func (r *reader) readErr(off int64, err error) error {
	if bloberror.HasCode(err, bloberror.ConditionNotMet) {
		// Azurite answers 412 for a deleted entry too.
		if _, perr := r.b.GetProperties(r.ctx, nil); isNotFound(perr) {
			return opErr("read", r.key, perr)
		}
		return fmt.Errorf("cachestore/azure: read %s: the entry was replaced since Open: %w", r.key, short(err))
	}
	if isNotFound(err) {
		return opErr("read", r.key, err)
	}
	return fmt.Errorf("cachestore/azure: read %s at %d: %w", r.key, off, short(err))
}
