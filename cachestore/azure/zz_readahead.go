package azure

// TEMPORARY experiment: chunked ranged reads with read-ahead, switched on
// by AZREAD_CHUNK_MIB and AZREAD_AHEAD. Removed after measuring.

import (
	"context"
	"io"
	"os"
	"strconv"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
)

var zzChunk, zzAhead = func() (int64, int) {
	c, _ := strconv.Atoi(os.Getenv("AZREAD_CHUNK_MIB"))
	a, _ := strconv.Atoi(os.Getenv("AZREAD_AHEAD"))
	return int64(c) << 20, a
}()

type zzRes struct {
	body io.ReadCloser
	err  error
}

type chunkStream struct {
	ctx  context.Context
	b    *blob.Client
	ac   *blob.AccessConditions
	next int64
	end  int64
	q    []chan zzRes
	cur  io.ReadCloser
}

func (r *reader) openChunks() {
	c := &chunkStream{ctx: r.ctx, b: r.b, ac: r.ifMatch(), next: r.pos, end: r.size}
	for len(c.q) < zzAhead && c.next < c.end {
		c.start()
	}
	r.stream = c
	r.streamOff = r.pos
	r.head = nil
}

func (c *chunkStream) start() {
	ch := make(chan zzRes, 1)
	off, n := c.next, min(zzChunk, c.end-c.next)
	c.next += n
	go func() {
		resp, err := c.b.DownloadStream(c.ctx, &blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: off, Count: n}, AccessConditions: c.ac})
		if err != nil {
			ch <- zzRes{err: err}
			return
		}
		ch <- zzRes{body: resp.Body}
	}()
	c.q = append(c.q, ch)
}

func (c *chunkStream) Read(p []byte) (int, error) {
	for {
		if c.cur == nil {
			if len(c.q) == 0 {
				return 0, io.EOF
			}
			res := <-c.q[0]
			c.q = c.q[1:]
			if res.err != nil {
				return 0, res.err
			}
			c.cur = res.body
			if c.next < c.end {
				c.start()
			}
		}
		n, err := c.cur.Read(p)
		if err == io.EOF {
			c.cur.Close()
			c.cur = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *chunkStream) Close() error {
	if c.cur != nil {
		c.cur.Close()
	}
	for _, ch := range c.q {
		go func() {
			if r := <-ch; r.body != nil {
				r.body.Close()
			}
		}()
	}
	return nil
}
