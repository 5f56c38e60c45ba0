package cachestore_test

import (
	"bytes"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// BenchmarkDiskOpenStat measures what a HEAD or a cache hit costs before any
// byte is sent: Open, Size and Close of a committed 1 MiB blob.
func BenchmarkDiskOpenStat(b *testing.B) {
	d, err := cachestore.NewDisk(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	data := bytes.Repeat([]byte("regproxy"), 1<<17)
	dg := digest.FromBytes(data)
	key := cachestore.BlobKey(dg)
	w, err := d.Create(b.Context(), key, cachestore.Options{Kind: cachestore.Content})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		b.Fatal(err)
	}
	if err := w.Commit(b.Context(), dg); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		r, err := d.Open(b.Context(), key)
		if err != nil {
			b.Fatal(err)
		}
		if r.Size() != int64(len(data)) {
			b.Fatalf("Size() = %d, want %d", r.Size(), len(data))
		}
		r.Close()
	}
}
