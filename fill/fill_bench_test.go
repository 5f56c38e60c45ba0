package fill_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/fill"
)

// BenchmarkDigestVerify is the cost every filled byte pays for sha256.
func BenchmarkDigestVerify(b *testing.B) {
	buf := make([]byte, 256<<10)
	h := sha256.New()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		h.Write(buf)
	}
}

// BenchmarkFillOneReader streams a 32 MiB blob through a fill (spool file,
// hash, commit by rename) to one reader.
func BenchmarkFillOneReader(b *testing.B) {
	blob := make([]byte, 32<<20)
	for i := range blob {
		blob[i] = byte(i * 7)
	}
	d := digest.FromBytes(blob)
	b.SetBytes(int64(len(blob)))
	b.ReportAllocs()
	for b.Loop() {
		store, err := cachestore.NewDisk(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		g := fill.New(fill.Config{Store: store})
		r, err := g.Do(context.Background(), d, func(context.Context, int64) (fill.Body, error) {
			return fill.Body{ReadCloser: io.NopCloser(bytes.NewReader(blob)), Size: int64(len(blob))}, nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, r); err != nil || n != int64(len(blob)) {
			b.Fatalf("read %d, %v", n, err)
		}
		r.Close()
		g.Close()
	}
}
