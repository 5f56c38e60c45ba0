package proxy_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// TestPullDuringOutage: a registry outage answers 503 to everything, the
// /v2/ ping and the token server included. A cached image still pulls,
// tag and all, also after a restart of regproxy during the outage; an
// image that is not cached fails cleanly.
func TestPullDuringOutage(t *testing.T) {
	t.Parallel()
	for _, restart := range []bool{false, true} {
		t.Run(map[bool]string{false: "running", true: "restarted"}[restart], func(t *testing.T) {
			t.Parallel()
			e := newIsolationEnv(t)
			img := e.up.RandomImage(t, 2, 1000)
			e.up.Push(t, "public/app", "v1", img)
			e.up.Push(t, "public/other", "v1", e.up.RandomImage(t, 1, 1000))
			want, _ := img.Digest()
			// One pull is enough: go-containerregistry GETs the tag first,
			// and regproxy learns then that the repository is public.
			if err := e.pullAs(authn.Anonymous, "public/app", "v1"); err != nil {
				t.Fatal(err)
			}
			e.up.SetFault(testupstream.FailWith(http.StatusServiceUnavailable))
			if restart {
				e.restart()
			}
			e.clock.Advance(e.ttl + time.Second) // the tag record is stale now
			if err := e.pullAs(authn.Anonymous, "public/app", "v1"); err != nil {
				t.Fatalf("pull of a cached image during an outage: %v", err)
			}
			if got := e.pull("public/app", "v1"); got.String() != want.String() {
				t.Fatalf("pulled %s during the outage; want %s", got, want)
			}
			if err := e.pullAs(authn.Anonymous, "public/other", "v1"); err == nil {
				t.Fatal("pull of an image that is not cached succeeded during an outage")
			}
		})
	}
}
