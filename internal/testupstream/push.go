package testupstream

import (
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Push writes img to repo:tag directly (not through a proxy), then resets
// the counters, so that counts start from zero after a push. Any count taken
// before the push is lost with it. In hub mode it takes the token handshake
// like any client but is granted push on every repository (see pushHeader),
// so repo need not be under "public/" or "private/" (though only those can
// be pulled).
func (u *Upstream) Push(t testing.TB, repo, tag string, img v1.Image) {
	t.Helper()
	ref := u.tag(t, repo, tag)
	if err := remote.Write(ref, img, u.remoteOptions(t)...); err != nil {
		t.Fatalf("testupstream: push %s: %v", ref, err)
	}
	u.ResetCounts()
}

// PushIndex writes idx and every image it holds to repo:tag, then resets the
// counters like Push.
func (u *Upstream) PushIndex(t testing.TB, repo, tag string, idx v1.ImageIndex) {
	t.Helper()
	ref := u.tag(t, repo, tag)
	if err := remote.WriteIndex(ref, idx, u.remoteOptions(t)...); err != nil {
		t.Fatalf("testupstream: push index %s: %v", ref, err)
	}
	u.ResetCounts()
}

// RandomImage returns an image of layers random layers of layerSize bytes
// each. It does not push it.
func (u *Upstream) RandomImage(t testing.TB, layers int, layerSize int64) v1.Image {
	t.Helper()
	img, err := random.Image(layerSize, int64(layers))
	if err != nil {
		t.Fatalf("testupstream: random image: %v", err)
	}
	return img
}

func (u *Upstream) tag(t testing.TB, repo, tag string) name.Tag {
	t.Helper()
	ref, err := name.NewTag(u.Host+"/"+repo+":"+tag, name.StrictValidation)
	if err != nil {
		t.Fatalf("testupstream: %v", err)
	}
	return ref
}

func (u *Upstream) remoteOptions(t testing.TB) []remote.Option {
	return []remote.Option{remote.WithTransport(u.pushRT), remote.WithContext(t.Context())}
}

// pushTransport marks the fixture's own requests with pushHeader, which
// the hub's token server answers with a token that may push. Push then
// takes the same token handshake as any client.
type pushTransport struct {
	key  string
	next http.RoundTripper
}

var _ http.RoundTripper = (*pushTransport)(nil)

func (p *pushTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context()) // a RoundTripper must not change its request
	r.Header.Set(pushHeader, p.key)
	return p.next.RoundTrip(r)
}
