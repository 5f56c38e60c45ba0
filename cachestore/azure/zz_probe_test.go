package azure

import (
	"context"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

func TestZZRanges(t *testing.T) {
	cfg := testConfig(t)
	cfg.BlockSize, cfg.BlocksInFlight = 0, 0
	s := newStore(t, cfg)
	const size = 256 << 20
	b := data(18, size)
	key := cachestore.BlobKey(digest.FromBytes(b))
	put(t, s, key, b)
	b = nil
	bc := s.c.NewBlobClient(key)
	ctx := context.Background()
	whole := func() {
		resp, err := bc.DownloadStream(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.CopyBuffer(io.Discard, struct{ io.Reader }{resp.Body}, make([]byte, 32<<10))
		resp.Body.Close()
	}
	ranged := func(chunk int64, ahead int) func() {
		return func() {
			type res struct {
				body io.ReadCloser
				err  error
			}
			var q []chan res
			next := int64(0)
			start := func() {
				ch := make(chan res, 1)
				off := next
				next += chunk
				go func() {
					resp, err := bc.DownloadStream(ctx, &blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: off, Count: min(chunk, size-off)}})
					if err != nil {
						ch <- res{err: err}
						return
					}
					ch <- res{body: resp.Body}
				}()
				q = append(q, ch)
			}
			for len(q) < ahead && next < size {
				start()
			}
			buf := make([]byte, 32<<10)
			for len(q) > 0 {
				r := <-q[0]
				q = q[1:]
				if r.err != nil {
					t.Fatal(r.err)
				}
				if next < size {
					start()
				}
				io.CopyBuffer(io.Discard, struct{ io.Reader }{r.body}, buf)
				r.body.Close()
			}
		}
	}
	for round := 0; round < 3; round++ {
		for _, c := range []struct {
			name string
			f    func()
		}{
			{"whole", whole},
			{"4MiBx1", ranged(4<<20, 1)},
			{"4MiBx3", ranged(4<<20, 3)},
			{"8MiBx2", ranged(8<<20, 2)},
			{"8MiBx4", ranged(8<<20, 4)},
			{"16MiBx2", ranged(16<<20, 2)},
			{"32MiBx2", ranged(32<<20, 2)},
			{"whole", whole},
		} {
			start := time.Now()
			c.f()
			t.Logf("%-8s %5.0f MB/s", c.name, size/time.Since(start).Seconds()/1e6)
		}
	}
}

func TestZZLatency(t *testing.T) {
	cfg := testConfig(t)
	cfg.BlockSize, cfg.BlocksInFlight = 0, 0
	s := newStore(t, cfg)
	b := data(18, 96<<20)
	key := cachestore.BlobKey(digest.FromBytes(b))
	put(t, s, key, b)
	bc := s.c.NewBlobClient(key)
	ctx := context.Background()
	for _, n := range []int64{1, 1 << 20, 2 << 20, 3 << 20, 4 << 20, 4<<20 + 1, 5 << 20, 6 << 20, 8 << 20, 16 << 20, 4 << 20, 8 << 20} {
		start := time.Now()
		for i := range 20 {
			resp, err := bc.DownloadStream(ctx, &blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: int64(i) * (1 << 20), Count: n}})
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		t.Logf("range %8d: %.1f ms each", n, time.Since(start).Seconds()/20*1000)
	}
}

func azCPU(t *testing.T) time.Duration {
	u, _ := url.Parse(azuriteEndpoint(t))
	want := "\x00--blobPort\x00" + u.Port() + "\x00"
	dirs, _ := os.ReadDir("/proc")
	pid := ""
	for _, d := range dirs {
		if b, err := os.ReadFile("/proc/" + d.Name() + "/cmdline"); err == nil && strings.Contains(string(b), want) {
			pid = d.Name()
		}
	}
	b, _ := os.ReadFile("/proc/" + pid + "/stat")
	_, rest, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func TestZZVariants(t *testing.T) {
	cfg := testConfig(t)
	cfg.BlockSize, cfg.BlocksInFlight = 0, 0
	s := newStore(t, cfg)
	const size = 256 << 20
	b := data(18, size)
	key := cachestore.BlobKey(digest.FromBytes(b))
	put(t, s, key, b)
	b = nil
	bc := s.c.NewBlobClient(key)
	ctx := context.Background()
	p, _ := bc.GetProperties(ctx, nil)
	dl := func(o *blob.DownloadStreamOptions, bufSize int) func() {
		return func() {
			resp, err := bc.DownloadStream(ctx, o)
			if err != nil {
				t.Fatal(err)
			}
			io.CopyBuffer(io.Discard, struct{ io.Reader }{resp.Body}, make([]byte, bufSize))
			resp.Body.Close()
		}
	}
	store := func() {
		r, err := s.Open(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, make([]byte, 32<<10))
		r.Close()
	}
	for round := 0; round < 3; round++ {
		for _, c := range []struct {
			name string
			f    func()
		}{
			{"whole", dl(nil, 32<<10)},
			{"range", dl(&blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: 256 << 10, Count: size - 256<<10}}, 32<<10)},
			{"ifmatch", dl(&blob.DownloadStreamOptions{AccessConditions: &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: p.ETag}}}, 32<<10)},
			{"whole1M", dl(nil, 1<<20)},
			{"store", store},
		} {
			cpu := azCPU(t)
			start := time.Now()
			c.f()
			t.Logf("%-8s %5.0f MB/s azurite %.2f s/GiB", c.name, size/time.Since(start).Seconds()/1e6, (azCPU(t)-cpu).Seconds()*4)
		}
	}
}

func TestZZStage(t *testing.T) {
	const size = 256 << 20
	b := data(19, size)
	dg := digest.FromBytes(b)
	for round := 0; round < 2; round++ {
		for _, c := range []struct{ bs, n int }{{4 << 20, 4}, {4 << 20, 2}, {4 << 20, 1}, {8 << 20, 2}, {8 << 20, 4}, {16 << 20, 2}, {2 << 20, 4}} {
			cfg := testConfig(t)
			cfg.BlockSize, cfg.BlocksInFlight = c.bs, c.n
			s := newStore(t, cfg)
			cpu := azCPU(t)
			start := time.Now()
			w, err := s.Create(t.Context(), cachestore.BlobKey(dg), cachestore.Options{Kind: cachestore.Content})
			if err != nil {
				t.Fatal(err)
			}
			for off := 0; off < size; off += 256 << 10 {
				if _, err := w.Write(b[off : off+256<<10]); err != nil {
					t.Fatal(err)
				}
			}
			wrote := time.Since(start)
			if err := w.Commit(t.Context(), dg); err != nil {
				t.Fatal(err)
			}
			t.Logf("%2d MiB x %d: %4.0f MB/s (commit %.0f ms after last write) azurite %.2f s/GiB", c.bs>>20, c.n, size/time.Since(start).Seconds()/1e6, (time.Since(start) - wrote).Seconds()*1000, (azCPU(t)-cpu).Seconds()*4)
		}
	}
}
