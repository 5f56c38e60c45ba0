package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/errgroup"
)

// warmer pulls images through the proxy: manifests with
// go-containerregistry, blobs with plain GETs whose bytes are counted and
// dropped (regproxy verifies each blob against its digest as it fills).
type warmer struct {
	base     http.RoundTripper // through the proxy, trusting its CA alone
	opts     *warmOptions
	slots    chan struct{} // one per blob download in flight, at most opts.parallel
	flights  blobFlights   // each blob downloaded once per run
	reporter reporter
}

func newWarmer(o *warmOptions, tr *http.Transport, rep reporter) *warmer {
	return &warmer{
		base:     transport.NewUserAgent(httpsOnly{tr}, "regproxy-warm/"+version),
		opts:     o,
		slots:    make(chan struct{}, o.parallel),
		reporter: rep,
	}
}

// imageResult is what warming one image did.
type imageResult struct {
	name      string // as the user wrote it
	manifests int    // indexes and image manifests read
	blobs     int    // distinct blobs (configs and layers) of the image
	size      int64  // their bytes
	tally            // the bytes of the blobs this image downloaded itself
	err       error
}

// tally sorts the bytes of downloaded blobs by the X-Cache header that
// regproxy sets on blob responses (proxy/blob.go).
type tally struct {
	downloaded int   // blobs this image downloaded; the others another image of the run did
	upstream   int64 // MISS, MISS-JOINED: regproxy fetched them upstream now
	cached     int64 // HIT: regproxy had them
	unreported int64 // no X-Cache: an older regproxy, or an answer it passed through uncached
}

func (t *tally) add(xcache string, n int64) {
	t.downloaded++
	switch xcache {
	case "HIT":
		t.cached += n
	case "MISS", "MISS-JOINED":
		t.upstream += n
	default:
		t.unreported += n
	}
}

// run warms images, opts.parallel at a time, and returns their results in
// the same order.
func (w *warmer) run(ctx context.Context, images []warmImage) []imageResult {
	results := make([]imageResult, len(images))
	sem := make(chan struct{}, w.opts.parallel)
	var wg sync.WaitGroup
	for i, img := range images {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			results[i] = w.warm(ctx, img)
		})
	}
	wg.Wait()
	w.reporter.wait()
	return results
}

// warm pulls one image: its manifests, then its blobs.
func (w *warmer) warm(ctx context.Context, img warmImage) (res imageResult) {
	res.name = img.name
	rep := w.reporter.start(img.name)
	defer func() { rep.done(res) }()
	repo := img.ref.Context()
	auth, err := w.opts.keychain.Resolve(repo)
	if err != nil {
		res.err = err
		return res
	}
	// One token handshake for the image's repository, for manifests and
	// blobs alike; remote adds nothing to a transport.Wrapper.
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, w.base, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		res.err = err
		return res
	}
	blobs, manifests, err := walk(img.ref, remote.WithTransport(rt), remote.WithContext(ctx))
	res.manifests, res.blobs = manifests, len(blobs)
	if err != nil {
		res.err = err
		return res
	}
	for _, b := range blobs {
		res.size += b.Size
	}
	rep.total(res)
	res.tally, res.err = w.fetchBlobs(ctx, &http.Client{Transport: rt}, repo, blobs, rep)
	return res
}

// maxIndexDepth bounds indexes within indexes.
const maxIndexDepth = 4

// walk reads ref's manifest and, for an index, every manifest it names,
// by digest, so that regproxy caches each; it returns the distinct blobs
// they name that a registry serves (foreign layers are not), and how many
// manifests it read.
func walk(ref name.Reference, opts ...remote.Option) (blobs []v1.Descriptor, manifests int, err error) {
	desc, err := remote.Get(ref, opts...)
	if err != nil {
		return nil, 0, err
	}
	seen := map[v1.Hash]bool{}
	image := func(img v1.Image) error {
		m, err := img.Manifest()
		if err != nil {
			return err
		}
		manifests++
		for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if !seen[d.Digest] && d.MediaType.IsDistributable() {
				seen[d.Digest] = true
				blobs = append(blobs, d)
			}
		}
		return nil
	}
	var index func(idx v1.ImageIndex, depth int) error
	index = func(idx v1.ImageIndex, depth int) error {
		im, err := idx.IndexManifest()
		if err != nil {
			return err
		}
		manifests++
		for _, child := range im.Manifests {
			if err := visit(idx, child, depth, image, index); err != nil {
				return fmt.Errorf("%s: %w", child.Digest, err)
			}
		}
		return nil
	}
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err == nil {
			err = index(idx, 0)
		}
		return blobs, manifests, err
	case desc.MediaType.IsImage():
		img, err := desc.Image()
		if err == nil {
			err = image(img)
		}
		return blobs, manifests, err
	}
	return nil, 0, fmt.Errorf("%s is neither an image nor an index", desc.MediaType)
}

// visit walks child, an entry of idx. Entries of other media types
// (neither image nor index) are skipped.
func visit(idx v1.ImageIndex, child v1.Descriptor, depth int,
	image func(v1.Image) error, index func(v1.ImageIndex, int) error) error {
	switch {
	case child.MediaType.IsIndex():
		if depth >= maxIndexDepth {
			return errors.New("indexes nested too deep")
		}
		ci, err := idx.ImageIndex(child.Digest)
		if err != nil {
			return err
		}
		return index(ci, depth+1)
	case child.MediaType.IsImage():
		ci, err := idx.Image(child.Digest)
		if err != nil {
			return err
		}
		return image(ci)
	}
	return nil
}

// fetchBlobs downloads blobs, within the run's slots. The first failure
// stops the image's other downloads.
func (w *warmer) fetchBlobs(ctx context.Context, client *http.Client, repo name.Repository, blobs []v1.Descriptor, rep imageReport) (tally, error) {
	var (
		mu sync.Mutex // guards t
		t  tally
	)
	g, gctx := errgroup.WithContext(ctx)
	for _, d := range blobs {
		g.Go(func() error {
			f, leader := w.flights.join(d.Digest)
			if !leader {
				if f.wait(gctx) == nil {
					rep.add(d.Size) // another image of this run downloaded it
					return nil
				}
				// That download failed: this image tries its own.
			}
			xcache, n, err := w.download(gctx, client, repo, d, rep)
			if leader {
				f.finish(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				t.add(xcache, n)
			}
			return err
		})
	}
	err := g.Wait()
	return t, err
}

// download GETs blob d of repo, counts its bytes into rep as they come
// and drops them, and returns the response's X-Cache and the size.
func (w *warmer) download(ctx context.Context, client *http.Client, repo name.Repository, d v1.Descriptor, rep imageReport) (string, int64, error) {
	select {
	case w.slots <- struct{}{}:
		defer func() { <-w.slots }()
	case <-ctx.Done():
		return "", 0, ctx.Err()
	}
	u := url.URL{Scheme: "https", Host: repo.RegistryStr(), Path: "/v2/" + repo.RepositoryStr() + "/blobs/" + d.Digest.String()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return "", 0, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	n, err := io.Copy(progressWriter{rep}, resp.Body)
	if err == nil && n != d.Size {
		err = fmt.Errorf("%d bytes, want %d", n, d.Size)
	}
	if err != nil {
		return "", 0, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	return resp.Header.Get("X-Cache"), n, nil
}

// progressWriter drops what it is given, and counts it into an image's
// progress.
type progressWriter struct{ rep imageReport }

func (p progressWriter) Write(b []byte) (int, error) {
	p.rep.add(int64(len(b)))
	return len(b), nil
}

// blobFlights makes each blob one download per run, whichever images
// share it. A blob whose download failed is tried again by each image
// that waited for it.
type blobFlights struct {
	mu sync.Mutex // guards m
	m  map[v1.Hash]*blobFlight
}

// blobFlight is one blob's download: err is set before done closes.
type blobFlight struct {
	done chan struct{}
	err  error
}

// join returns d's flight, and whether the caller leads it (and must
// finish it).
func (b *blobFlights) join(d v1.Hash) (*blobFlight, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if f, ok := b.m[d]; ok {
		return f, false
	}
	if b.m == nil {
		b.m = make(map[v1.Hash]*blobFlight)
	}
	f := &blobFlight{done: make(chan struct{})}
	b.m[d] = f
	return f, true
}

func (f *blobFlight) finish(err error) {
	f.err = err
	close(f.done)
}

// wait returns the flight's error, or ctx's if it ends first.
func (f *blobFlight) wait(ctx context.Context) error {
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// httpsOnly sends every request over HTTPS: regproxy intercepts HTTPS
// only, while go-containerregistry would use plain HTTP for a registry on
// localhost or a private address.
type httpsOnly struct{ inner http.RoundTripper }

func (h httpsOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "http" {
		r = r.Clone(r.Context())
		r.URL.Scheme = "https"
	}
	return h.inner.RoundTrip(r)
}

var _ http.RoundTripper = httpsOnly{}
