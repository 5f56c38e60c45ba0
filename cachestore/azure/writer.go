package azure

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"sync"

	// go-digest hashes sha384 and sha512 through crypto.Hash, which only
	// knows the algorithms whose packages are linked in.
	_ "crypto/sha512"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// errWriterDone is returned by Write and Commit on a writer that was already
// committed or canceled.
var errWriterDone = errors.New("cachestore/azure: writer already committed or canceled")

// maxBlocks is the most blocks Azure commits into one blob.
const maxBlocks = 50000

// Create implements cachestore.Store. ctx bounds the writer's background
// uploads as well as Create: once it ends, Write and Commit fail. Uploads
// start as soon as a block is full, but Azure shows the entry only when
// Commit has verified the digest and committed the block list.
//
// The bytes are hashed with sha256 as they arrive, the algorithm of every
// digest registries use. An entry that fits in one block can be committed
// under a digest of any algorithm; a larger one only under sha256, since its
// blocks cannot be read back before they are committed.
func (s *Store) Create(ctx context.Context, key string, opts cachestore.Options) (cachestore.Writer, error) {
	if _, err := s.blob(key); err != nil {
		return nil, err
	}
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("cachestore/azure: create %s: %w", key, err)
	}
	w := &writer{
		s: s, key: key, bb: s.c.NewBlockBlobClient(key), kind: opts.Kind, content: opts.Kind == cachestore.Content,
		mediaType: opts.MediaType, h: digest.SHA256.Hash(), sem: make(chan struct{}, s.cfg.BlocksInFlight),
		free: make(chan *[]byte, s.cfg.BlocksInFlight),
	}
	// Block IDs are unique to this writer: writers of one key stage into
	// the same blob, and a shared ID would let one overwrite another's block.
	if _, err := rand.Read(w.nonce[:]); err != nil {
		return nil, fmt.Errorf("cachestore/azure: create %s: %w", key, err)
	}
	w.ctx, w.cancel = context.WithCancel(ctx)
	return w, nil
}

// writer stages full blocks in the background and commits them (or puts a
// small entry whole) once Commit has verified the digest. Like an *os.File
// it is meant for one goroutine at a time; its uploads run on their own.
type writer struct {
	s         *Store
	key       string
	bb        *blockblob.Client
	kind      cachestore.Kind // kept in the blob's metadata
	content   bool            // a cachestore.Content entry: committed with If-None-Match: *
	mediaType string          // the blob's Content-Type; "" for none
	nonce     [8]byte
	h         hash.Hash // sha256 of the bytes written

	cur    *[]byte  // the block being filled, with a token of sem; nil when none is
	curLen int      // bytes in cur
	ids    []string // IDs of the blocks staged so far, in order
	done   bool     // committed or canceled
	broken error    // why a Write failed: the entry is incomplete, so Commit fails too

	ctx    context.Context // of the uploads; canceled when the writer is done or one fails
	cancel context.CancelFunc
	sem    chan struct{} // one token per block in memory: cur, an upload in flight, or taken by drain
	free   chan *[]byte  // blocks whose upload is done, for newBlock to reuse
	held   int           // tokens drain took to wait for uploads; cap(sem) means none runs or will

	mu  sync.Mutex // guards err
	err error      // the first upload error
}

// Write implements io.Writer. It copies p into blocks, and waits only when
// it needs a new block while BlocksInFlight are in memory (uploading). After
// a failed upload it fails.
func (w *writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, errWriterDone
	}
	if w.broken != nil {
		return 0, w.broken
	}
	n, err := w.write(p)
	w.broken = err
	return n, err
}

func (w *writer) write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if err := w.uploadErr(); err != nil {
			return written, err
		}
		if w.cur == nil {
			if err := w.newBlock(); err != nil {
				return written, err
			}
		}
		n := copy((*w.cur)[w.curLen:], p)
		w.h.Write(p[:n])
		w.curLen += n
		written += n
		p = p[n:]
		if w.curLen == len(*w.cur) {
			if err := w.stage(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// newBlock takes a token and a block as cur, waiting while BlocksInFlight
// blocks are in memory. Taking the token before the block rather than
// before its upload bounds a writer's memory to BlocksInFlight blocks: the
// one it fills waits its turn, which costs nothing while uploads are slower
// than filling, and they are.
func (w *writer) newBlock() error {
	select {
	case w.sem <- struct{}{}:
	case <-w.ctx.Done():
		if err := w.uploadErr(); err != nil {
			return err // it canceled ctx
		}
		return fmt.Errorf("cachestore/azure: write %s: %w", w.key, w.ctx.Err())
	}
	select {
	case w.cur = <-w.free:
	default:
		b := make([]byte, w.s.cfg.BlockSize) // a writer's blocks are reused by it alone (see release)
		w.cur = &b
	}
	w.curLen = 0
	return nil
}

// dropBlock drops cur, if any, and returns its token.
func (w *writer) dropBlock() {
	if w.cur != nil {
		w.cur, w.curLen = nil, 0
		<-w.sem
	}
}

// stage uploads the current block in the background; the upload takes over
// its token.
func (w *writer) stage() error {
	if len(w.ids) == maxBlocks {
		return fmt.Errorf("cachestore/azure: write %s: more than %d blocks of %d bytes", w.key, maxBlocks, w.s.cfg.BlockSize)
	}
	buf, n := w.cur, w.curLen
	w.cur, w.curLen = nil, 0
	i := len(w.ids)
	id := w.blockID(i)
	w.ids = append(w.ids, id)
	go func() {
		defer func() {
			w.free <- buf // before the token: whoever takes it finds the block
			<-w.sem
		}()
		body := streaming.NopCloser(bytes.NewReader((*buf)[:n]))
		if _, err := w.bb.StageBlock(w.ctx, id, body, nil); err != nil {
			w.fail(fmt.Errorf("cachestore/azure: stage block %d of %s: %w", i, w.key, short(err)))
		}
	}()
	return nil
}

// blockID is the ID of block i: the writer's nonce and i, 16 bytes, so that
// every ID of a blob has the same length as Azure requires.
func (w *writer) blockID(i int) string {
	var b [16]byte
	copy(b[:8], w.nonce[:])
	binary.BigEndian.PutUint64(b[8:], uint64(i))
	return base64.StdEncoding.EncodeToString(b[:])
}

// fail records the first upload error and stops the other uploads.
func (w *writer) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
	w.cancel()
}

func (w *writer) uploadErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// drain waits until no upload runs, taking every token so that none starts.
// The writer stages nothing once Commit has begun and holds no block (cur
// is nil), so every token it does not hold belongs to an upload.
func (w *writer) drain(ctx context.Context) error {
	for w.held < cap(w.sem) {
		select {
		case w.sem <- struct{}{}:
			w.held++
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// release ends the writer: it stops and waits for the uploads (which end
// quickly once canceled) and lets go of its blocks. They are not pooled
// for other writers: a pool keeps idle blocks live through a garbage
// collection, which then sets the next heap goal twice as high, and a
// block's allocation costs nothing next to its upload.
func (w *writer) release() {
	w.cancel()
	w.dropBlock()
	for w.held < cap(w.sem) {
		w.sem <- struct{}{}
		w.held++
	}
	for len(w.free) > 0 {
		<-w.free // the caller may keep the writer: its blocks go now
	}
}

// Cancel implements cachestore.Writer. Blocks already staged stay in Azure
// as uncommitted blocks, which no read or listing shows and which Azure
// discards a week later, or at the next commit of the key.
func (w *writer) Cancel() error {
	if w.done {
		return nil
	}
	w.done = true
	w.release()
	return nil
}

// Commit implements cachestore.Writer:
//  1. verify the bytes written against dg, from the hash kept while writing;
//  2. an entry that fits in one block is put whole in one request; a larger
//     one stages its last block, waits for every upload, and commits the
//     block list;
//  3. content-addressed keys are committed with If-None-Match: *, and a
//     conflict means that another writer committed the same content first,
//     which is success.
func (w *writer) Commit(ctx context.Context, dg digest.Digest) error {
	if w.done {
		return errWriterDone
	}
	w.done = true
	defer w.release()
	if w.broken != nil {
		return w.broken
	}
	if err := w.verify(ctx, dg); err != nil {
		return fmt.Errorf("cachestore/azure: commit %s: %w", w.key, err)
	}
	var err error
	if len(w.ids) == 0 {
		err = w.putWhole(ctx)
	} else {
		err = w.commitBlocks(ctx)
	}
	if err = w.settle(ctx, err); err != nil {
		return fmt.Errorf("cachestore/azure: commit %s: %w", w.key, short(err))
	}
	return nil
}

// verify checks that the bytes written hash to dg. Only sha256 is hashed
// while writing; another algorithm can be checked only while the whole
// entry is still in memory.
func (w *writer) verify(ctx context.Context, dg digest.Digest) error {
	if err := dg.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var got digest.Digest
	switch {
	case dg.Algorithm() == digest.SHA256:
		got = digest.NewDigest(digest.SHA256, w.h)
	case len(w.ids) == 0:
		got = dg.Algorithm().FromBytes(w.whole())
	default:
		return fmt.Errorf("cannot verify a %s digest of an entry larger than one block", dg.Algorithm())
	}
	if got != dg {
		return fmt.Errorf("%w: got %s, want %s", cachestore.ErrDigestMismatch, got, dg)
	}
	return nil
}

// whole returns the bytes of an entry that no upload has taken yet.
func (w *writer) whole() []byte {
	if w.cur == nil {
		return nil
	}
	return (*w.cur)[:w.curLen]
}

// putWhole stores an entry that fits in one block with one request.
func (w *writer) putWhole(ctx context.Context) error {
	body := streaming.NopCloser(bytes.NewReader(w.whole()))
	_, err := w.bb.Upload(ctx, body, &blockblob.UploadOptions{
		HTTPHeaders:      w.headers(),
		Metadata:         w.metadata(),
		AccessConditions: w.conditions(),
	})
	return err
}

// commitBlocks stages the last block, waits for every upload and commits
// the block list.
func (w *writer) commitBlocks(ctx context.Context) error {
	if w.curLen > 0 {
		if err := w.stage(); err != nil {
			return err
		}
	}
	w.dropBlock() // an empty one, if any
	if err := w.drain(ctx); err != nil {
		return err
	}
	if err := w.uploadErr(); err != nil {
		return err
	}
	_, err := w.bb.CommitBlockList(ctx, w.ids, &blockblob.CommitBlockListOptions{
		HTTPHeaders:      w.headers(),
		Metadata:         w.metadata(),
		AccessConditions: w.conditions(),
	})
	return err
}

// settle decides whether a commit that failed with err succeeded all the
// same: for a Content entry, another writer's commit of the same
// content counts. That commit also discards this writer's uncommitted
// blocks, so Azure may answer InvalidBlockList rather than a conflict. So
// the entry must be there; if it is not, the conflict was with uncommitted
// blocks alone (Azurite refuses a conditional put whole over them), and an
// entry that fits in one block is put again without the condition, which
// is safe since any other writer of the key writes the same bytes.
func (w *writer) settle(ctx context.Context, err error) error {
	if err == nil || !w.content ||
		!bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet, bloberror.InvalidBlockList) {
		return err
	}
	_, perr := w.bb.GetProperties(ctx, nil)
	if perr == nil {
		return nil
	}
	if !isNotFound(perr) || len(w.ids) > 0 {
		return err
	}
	w.content = false // no condition
	return w.putWhole(ctx)
}

func (w *writer) headers() *blob.HTTPHeaders {
	if w.mediaType == "" {
		return nil
	}
	return &blob.HTTPHeaders{BlobContentType: to.Ptr(w.mediaType)}
}

// metadata keeps the entry's kind with it, for readers (see kindOf).
func (w *writer) metadata() map[string]*string {
	return map[string]*string{kindMetadata: to.Ptr(w.kind.String())}
}

// conditions makes the first commit of a Content entry the only one.
func (w *writer) conditions() *blob.AccessConditions {
	if !w.content {
		return nil
	}
	return &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{
		IfNoneMatch: to.Ptr(azcore.ETagAny),
	}}
}
