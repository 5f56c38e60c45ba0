package proxy_test

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/regproxy/regproxy/internal/testupstream"
	"github.com/regproxy/regproxy/upstreamauth"
)

// newHubEnv is an env whose upstream behaves like Docker Hub: token auth
// on auth.test, blobs redirected to cdn.test. Both are intercepted.
func newHubEnv(t *testing.T, creds upstreamauth.Keyring) *env {
	t.Helper()
	e := newEnv(t, testupstream.WithHub())
	e.stop()
	e.registries = []string{"registry.test", "auth.test", "cdn.test"}
	e.creds = creds
	e.start()
	return e
}

// pullAs pulls through the proxy with the client's own credentials.
func (e *env) pullAs(auth authn.Authenticator, repo, tag string) error {
	ref, err := name.ParseReference(e.up.Host + "/" + repo + ":" + tag)
	if err != nil {
		return err
	}
	img, err := remote.Image(ref, remote.WithTransport(e.transport()), remote.WithAuth(auth))
	if err != nil {
		return err
	}
	readAllBlobs(e.t, img)
	return nil
}

func TestClientTokensAndCDNRedirects(t *testing.T) {
	t.Parallel()
	e := newHubEnv(t, nil)
	img := e.up.RandomImage(t, 2, 10000)
	e.up.Push(t, "public/app", "v1", img)
	e.up.Push(t, "private/app", "v1", img)
	if err := e.pullAs(authn.Anonymous, "public/app", "v1"); err != nil {
		t.Fatalf("anonymous pull of a public image: %v", err)
	}
	if n := e.up.CountHost("cdn.test"); n != 3 {
		t.Fatalf("%d CDN requests; want 3 (config and 2 layers, redirects followed by regproxy)", n)
	}
	if n := e.up.CDNSawAuthorization(); n != 0 {
		t.Fatalf("%d CDN requests carried the registry token; want 0", n)
	}
	if err := e.pullAs(authn.Anonymous, "private/app", "v1"); err == nil {
		t.Fatal("anonymous pull of a private image succeeded without configured credentials")
	}
	if err := e.pullAs(&authn.Basic{Username: testupstream.HubUser, Password: testupstream.HubPassword}, "private/app", "v1"); err != nil {
		t.Fatalf("pull of a private image with the client's own credentials: %v", err)
	}
}

func TestConfiguredCredentialsServeAnonymousClients(t *testing.T) {
	t.Parallel()
	e := newHubEnv(t, nil)
	e.stop()
	e.creds = upstreamauth.Keyring{e.up.Host: {Username: testupstream.HubUser, Password: testupstream.HubPassword}}
	e.start()
	img := e.up.RandomImage(t, 2, 10000)
	e.up.Push(t, "private/app", "v1", img)
	if err := e.pullAs(authn.Anonymous, "private/app", "v1"); err != nil {
		t.Fatalf("anonymous client, proxy with credentials, private image: %v", err)
	}
	tokens := e.up.Count("GET token")
	if tokens == 0 || tokens > 2 {
		t.Fatalf("%d token requests; want the proxy to fetch a token once per scope and reuse it", tokens)
	}
	e.up.ResetCounts()
	e.clock.Advance(e.ttl + 1) // the tag goes stale; revalidation needs a token again
	if err := e.pullAs(authn.Anonymous, "private/app", "v1"); err != nil {
		t.Fatalf("second pull: %v", err)
	}
	if n := e.up.CountHost("cdn.test"); n != 0 {
		t.Fatalf("second pull fetched %d blobs from the CDN; want 0", n)
	}
}

func TestTokenServerTunnelled(t *testing.T) {
	t.Parallel()
	e := newHubEnv(t, nil)
	e.stop()
	e.registries = []string{"registry.test", "cdn.test"} // auth.test is tunnelled
	e.start()
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "public/app", "v1", img)
	// The client now sees auth.test's own certificate: it trusts both CAs.
	tr := e.transport()
	tr.TLSClientConfig.RootCAs.AppendCertsFromPEM(e.up.CAPEM)
	ref, _ := name.ParseReference(e.up.Host + "/public/app:v1")
	pulled, err := remote.Image(ref, remote.WithTransport(tr), remote.WithAuth(authn.Anonymous))
	if err != nil {
		t.Fatalf("pull with a tunnelled token server: %v", err)
	}
	readAllBlobs(t, pulled)
	if n := e.up.Count("GET token"); n == 0 {
		t.Fatal("no token request reached auth.test through the tunnel")
	}
}
