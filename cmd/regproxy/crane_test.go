package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// craneTimeout bounds one in-process pull or manifest round.
const craneTimeout = 2 * time.Minute

// TestCranePull pulls the image and the multi-arch index with
// go-containerregistry in-process, reading every blob through regproxy.
// The first pull fetches each blob upstream exactly once; a second pull
// with a fresh client (crane keeps no local store) fetches none, and gets
// no manifest upstream. Then, during a registry outage and past
// --manifest-ttl, a third pull gets the same images from the cache, and a
// pull of an image that is not cached fails.
func TestCranePull(t *testing.T) {
	t.Parallel()
	s := newHubSetup(t, outageFlags...)
	uncached := s.pushUncached(t)

	blobs := cranePullAll(t, s)
	if got := s.up.Count("GET blob"); got != int64(blobs) {
		t.Errorf("first pull: %d blob GETs upstream, want %d: one per distinct blob", got, blobs)
	}
	before, manifests := s.BlobFetches(), s.up.Count("GET manifest")
	cranePullAll(t, s)
	expires := time.Now().Add(outageTTL) // the second pull may revalidate tags
	s.AssertNoBlobFetchesSince(t, before, "second crane pull")
	if got := s.up.Count("GET manifest"); got != manifests {
		t.Errorf("second pull: %d manifest GETs upstream, want still %d", got, manifests)
	}

	o := s.beginOutage(t, expires)
	if got := cranePullAll(t, s); got != blobs {
		t.Errorf("pull during the outage read %d blobs, want %d as before", got, blobs)
	}
	s.AssertPulledDuringOutage(t, o, "crane pull during the outage", true, s.Image, s.Index)

	ctx, cancel := context.WithTimeout(t.Context(), craneTimeout)
	defer cancel()
	_, err := crane.Pull(uncached.Ref(s), crane.WithTransport(craneTransport(t, s)),
		crane.WithAuth(authn.Anonymous), crane.WithContext(ctx), craneNoRetry)
	// The client's side of the miss: a 5xx whose body is an OCI error
	// (upstream's own 503, which regproxy relays; 502 if it were
	// unreachable).
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode < http.StatusInternalServerError || len(terr.Errors) == 0 {
		t.Errorf("crane pull %s, which is not cached, during the outage: %v; want a 5xx with an OCI error body", uncached.Ref(s), err)
	}
	s.AssertMissFailedDuringOutage(t, o, "crane pull of an uncached image during the outage", uncached)
}

// cranePullAll pulls s.Image and every instance of s.Index with a new
// client, verifies all they hold, and returns how many distinct blobs
// (configs and layers) it read.
func cranePullAll(t *testing.T, s *hubSetup) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), craneTimeout)
	defer cancel()
	opts := []crane.Option{
		crane.WithTransport(craneTransport(t, s)),
		crane.WithAuth(authn.Anonymous),
		crane.WithContext(ctx),
		craneNoRetry,
	}
	seen := map[v1.Hash]bool{}
	img, err := crane.Pull(s.Image.Ref(s), opts...)
	if err != nil {
		t.Fatalf("crane pull %s: %v", s.Image.Ref(s), err)
	}
	checkCraneImage(t, img, s.Image.Digest, seen)

	ref, err := name.ParseReference(s.Index.Ref(s))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(ref, crane.GetOptions(opts...).Remote...)
	if err != nil {
		t.Fatalf("remote.Index %s: %v", ref, err)
	}
	if d, err := idx.Digest(); err != nil || d.String() != s.Index.Digest {
		t.Errorf("index digest = %v, %v; want %s", d, err, s.Index.Digest)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 {
		t.Fatalf("index has %d manifests, want 2 (linux/amd64, linux/arm64/v8)", len(im.Manifests))
	}
	for _, desc := range im.Manifests {
		child, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatalf("index instance %s: %v", desc.Digest, err)
		}
		checkCraneImage(t, child, desc.Digest.String(), seen)
	}
	return len(seen)
}

// craneNoRetry makes go-containerregistry give up at the first failure,
// as skopeo's --retry-times 0 does: it would retry a 503 twice, waiting
// 1 s and 3 s, which an outage only makes slower to fail.
func craneNoRetry(o *crane.Options) {
	o.Remote = append(o.Remote, remote.WithRetryBackoff(remote.Backoff{Steps: 1}))
}

// craneTransport is what a node's Go client would use: regproxy as the
// proxy and regproxy's CA as the only root, so that nothing reaches the
// fake hosts except through an interception.
func craneTransport(t *testing.T, s *hubSetup) *http.Transport {
	t.Helper()
	pem, err := os.ReadFile(s.caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", s.caFile)
	}
	proxy, err := url.Parse(s.ProxyURL())
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{
		Proxy:           http.ProxyURL(proxy),
		TLSClientConfig: &tls.Config{RootCAs: roots},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// checkCraneImage checks img's manifest digest, then reads its config and
// each layer not in seen, hashing the bytes itself rather than trusting
// the library's verification, and adds them to seen.
func checkCraneImage(t *testing.T, img v1.Image, wantDigest string, seen map[v1.Hash]bool) {
	t.Helper()
	if d, err := img.Digest(); err != nil || d.String() != wantDigest {
		t.Errorf("manifest digest = %v, %v; want %s", d, err, wantDigest)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		t.Fatalf("config %s: %v", cfg, err)
	}
	if sum := sha256.Sum256(raw); "sha256:"+hex.EncodeToString(sum[:]) != cfg.String() {
		t.Errorf("config %s has sha256 %x", cfg, sum)
	}
	seen[cfg] = true
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if !seen[d] {
			checkCraneLayer(t, l, d)
			seen[d] = true
		}
	}
}

func checkCraneLayer(t *testing.T, l v1.Layer, want v1.Hash) {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatalf("layer %s: %v", want, err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatalf("read layer %s: %v", want, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != want.String() {
		t.Errorf("layer %s has digest %s", want, got)
	}
}

// manifestReply is what a client learns from a manifest GET.
type manifestReply struct {
	ContentType string
	Digest      string // sha256 of the body
	Header      string // Docker-Content-Digest
}

// TestCraneIndexVsManifestAccept GETs the index's tag once with Accept
// naming only the Docker schema 2 manifest and once naming the list and
// index types, twice over. Each client must get what upstream itself
// answers for its Accept, and regproxy must keep one tag record per Accept:
// two manifest GETs upstream in the first round, none in the second.
//
// go-containerregistry's registry ignores Accept and returns the index to
// both clients, so this cannot show content negotiation itself; it shows
// that the cache never answers one Accept with an entry filled for the
// other, which is what keeps Docker Hub's negotiation intact.
func TestCraneIndexVsManifestAccept(t *testing.T) {
	t.Parallel()
	s := newHubSetup(t)
	single := string(types.DockerManifestSchema2)
	lists := string(types.DockerManifestList) + ", " + string(types.OCIImageIndex)
	accepts := []string{single, lists}

	direct := craneManifestClient(t, s, s.up.Transport())
	want := map[string]manifestReply{}
	for _, accept := range accepts {
		want[accept] = getManifest(t, direct, s, accept)
	}
	if want[lists].Digest != s.Index.Digest {
		t.Fatalf("upstream answers Accept %q with %s, want the index %s", lists, want[lists].Digest, s.Index.Digest)
	}

	base := s.up.Count("GET manifest")
	for round := 1; round <= 2; round++ {
		proxied := craneManifestClient(t, s, craneTransport(t, s))
		for _, accept := range accepts {
			if got := getManifest(t, proxied, s, accept); got != want[accept] {
				t.Errorf("round %d, Accept %q: got %+v, want %+v as upstream answers", round, accept, got, want[accept])
			}
		}
		if got := s.up.Count("GET manifest") - base; got != 2 {
			t.Errorf("after round %d: %d manifest GETs upstream, want 2 (one per Accept, then hits)", round, got)
		}
	}
}

// craneManifestClient returns a client that speaks the token handshake
// for pulling s.Index's repository over inner.
func craneManifestClient(t *testing.T, s *hubSetup, inner http.RoundTripper) *http.Client {
	t.Helper()
	repo, err := name.NewRepository(s.up.Host + "/" + s.Index.Repo)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), craneTimeout)
	defer cancel()
	rt, err := transport.NewWithContext(ctx, repo.Registry, authn.Anonymous, inner, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		t.Fatalf("token handshake with %s: %v", repo.Registry, err)
	}
	return &http.Client{Transport: rt, Timeout: craneTimeout}
}

func getManifest(t *testing.T, c *http.Client, s *hubSetup, accept string) manifestReply {
	t.Helper()
	u := "https://" + s.up.Host + "/v2/" + s.Index.Repo + "/manifests/" + s.Index.Tag
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", accept)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s with Accept %q: %s, %v: %.300s", u, accept, resp.Status, err, body)
	}
	sum := sha256.Sum256(body)
	return manifestReply{
		ContentType: strings.TrimSpace(resp.Header.Get("Content-Type")),
		Digest:      "sha256:" + hex.EncodeToString(sum[:]),
		Header:      resp.Header.Get("Docker-Content-Digest"),
	}
}
