package testupstream

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// hubDo sends a request through Transport without following redirects.
func hubDo(t *testing.T, u *Upstream, method, url string, header http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	c := &http.Client{
		Transport:     u.Transport(),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// token asks the hub's token server for scope, with Basic auth if user is
// set, and returns the token.
func token(t *testing.T, u *Upstream, scope, user, pass string) string {
	t.Helper()
	q := url.Values{"service": {"registry.test"}, "scope": {scope}}
	var h http.Header
	if user != "" {
		h = http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}}
	}
	resp := hubDo(t, u, "GET", "https://"+u.AuthHost()+"/token?"+q.Encode(), h)
	var body struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
		IssuedAt    string `json:"issued_at"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET token: %s (%v)", resp.Status, err)
	}
	if _, err := time.Parse(time.RFC3339, body.IssuedAt); err != nil || body.AccessToken == "" || body.Token != body.AccessToken || body.ExpiresIn != 300 {
		t.Errorf("token body = %+v (%v), want token = access_token, expires_in 300 and RFC 3339 issued_at", body, err)
	}
	return body.AccessToken
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// hubWithImage starts a hub with a RunnableImage at public/app:v1 and
// private/app:v1.
func hubWithImage(t *testing.T) (*Upstream, v1.Image) {
	t.Helper()
	u := Start(t, WithHub())
	img := u.RunnableImage(t, 2)
	u.Push(t, "public/app", "v1", img)
	u.Push(t, "private/app", "v1", img)
	return u, img
}

func TestHubHosts(t *testing.T) {
	t.Parallel()
	u := Start(t, WithHub())
	if got, want := u.AuthHost(), "auth.test:"+u.Port; got != want {
		t.Errorf("AuthHost() = %q, want %q", got, want)
	}
	if got, want := u.CDNHost(), "cdn.test:"+u.Port; got != want {
		t.Errorf("CDNHost() = %q, want %q", got, want)
	}
	want := []string{u.Resolve(), "auth.test:" + u.Port + "=" + u.Addr, "cdn.test:" + u.Port + "=" + u.Addr}
	if got := u.Resolves(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("Resolves() = %q, want %q", got, want)
	}
	if got := Start(t).Resolves(); len(got) != 1 {
		t.Errorf("Resolves() without hub = %q, want only Resolve()", got)
	}
	if resp := hubDo(t, u, "GET", "https://registry2.test:"+u.Port+"/v2/", nil); resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("GET registry2.test: %s, want 421", resp.Status)
	}
}

func TestHubChallenge(t *testing.T) {
	t.Parallel()
	u, img := hubWithImage(t)
	pub := token(t, u, "repository:public/app:pull", "", "")
	cfg, _ := img.ConfigName()
	realm := `Bearer realm="https://auth.test:` + u.Port + `/token",service="registry.test"`
	for _, tc := range []struct {
		desc, method, path string
		header             http.Header
		want               string // WWW-Authenticate
	}{
		{"ping", "GET", "/v2/", nil, realm},
		{"manifest", "GET", "/v2/public/app/manifests/v1", nil, realm + `,scope="repository:public/app:pull"`},
		{"HEAD blob", "HEAD", "/v2/public/app/blobs/" + cfg.String(), nil, realm + `,scope="repository:public/app:pull"`},
		{"upload", "POST", "/v2/public/app/blobs/uploads/", nil, realm + `,scope="repository:public/app:pull,push"`},
		{"unknown token", "GET", "/v2/", bearer("nope"), realm + `,error="invalid_token"`},
		{"basic on registry", "GET", "/v2/", http.Header{"Authorization": {"Basic cHVsbGVyOnMzY3JldC1wdw=="}}, realm},
		{"wrong repo", "GET", "/v2/public/other/manifests/v1", bearer(pub), realm + `,scope="repository:public/other:pull",error="insufficient_scope"`},
		{"private anonymous", "GET", "/v2/private/app/manifests/v1", bearer(token(t, u, "repository:private/app:pull", "", "")),
			realm + `,scope="repository:private/app:pull",error="insufficient_scope"`},
		{"push with pull token", "POST", "/v2/public/app/blobs/uploads/", bearer(pub), realm + `,scope="repository:public/app:pull,push",error="insufficient_scope"`},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			resp := hubDo(t, u, tc.method, "https://"+u.Host+tc.path, tc.header)
			if got := resp.Header.Get("WWW-Authenticate"); resp.StatusCode != http.StatusUnauthorized || got != tc.want {
				t.Errorf("got %s %s, want 401 %s", resp.Status, got, tc.want)
			}
			var body struct{ Errors []struct{ Code string } }
			if err := json.NewDecoder(resp.Body).Decode(&body); tc.method != "HEAD" && (err != nil || len(body.Errors) != 1 || body.Errors[0].Code != "UNAUTHORIZED") {
				t.Errorf("body = %+v (%v), want one UNAUTHORIZED error", body, err)
			}
		})
	}
	if resp := hubDo(t, u, "GET", "https://"+u.Host+"/v2/", bearer(pub)); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/ with a token: %s, want 200", resp.Status)
	}
}

func TestHubTokenServer(t *testing.T) {
	t.Parallel()
	u := Start(t, WithHub())
	base := "https://" + u.AuthHost() + "/token"
	for _, tc := range []struct {
		desc, method, url string
		body              string
		user, pass        string
		want              int
	}{
		{"anonymous", "GET", base + "?service=registry.test&scope=repository:public/a:pull", "", "", "", 200},
		{"user", "GET", base + "?service=registry.test", "", HubUser, HubPassword, 200},
		{"wrong password", "GET", base + "?service=registry.test", "", HubUser, "wrong", 401},
		{"wrong service", "GET", base + "?service=registry.example", "", "", "", 400},
		{"oauth password", "POST", base, "grant_type=password&service=registry.test&username=puller&password=s3cret-pw&scope=repository:private/a:pull", "", "", 200},
		{"oauth wrong password", "POST", base, "grant_type=password&service=registry.test&username=puller&password=x", "", "", 401},
		{"oauth refresh", "POST", base, "grant_type=refresh_token&service=registry.test&refresh_token=x", "", "", 400},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), tc.method, tc.url, strings.NewReader(tc.body))
			if tc.body != "" {
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			}
			if tc.user != "" {
				req.SetBasicAuth(tc.user, tc.pass)
			}
			resp, err := u.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("got %s, want %d", resp.Status, tc.want)
			}
		})
	}
	if got, want := u.Count("GET token"), int64(4); got != want {
		t.Errorf(`Count("GET token") = %d, want %d`, got, want)
	}
	if got, want := u.CountHost("auth.test"), int64(7); got != want {
		t.Errorf(`CountHost("auth.test") = %d, want %d`, got, want)
	}
}

func TestHubPull(t *testing.T) {
	t.Parallel()
	u, img := hubWithImage(t)
	want, _ := img.Digest()
	pull := func(repo string, auth authn.Authenticator) error {
		ref, err := name.ParseReference(u.Host+"/"+repo+":v1", name.StrictValidation)
		if err != nil {
			return err
		}
		got, err := remote.Image(ref, remote.WithTransport(u.Transport()), remote.WithAuth(auth), remote.WithContext(t.Context()))
		if err != nil {
			return err
		}
		if d, _ := got.Digest(); d != want {
			t.Errorf("%s digest = %s, want %s", repo, d, want)
		}
		if _, err := got.RawConfigFile(); err != nil {
			return err
		}
		layers, err := got.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			rc, err := l.Compressed() // verifies the digest at EOF
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, rc)
			rc.Close()
			if err != nil {
				return err
			}
		}
		return nil
	}

	if err := pull("public/app", authn.Anonymous); err != nil {
		t.Errorf("anonymous pull of public/app: %v", err)
	}
	// Two layers and the config, each a redirect to the CDN, and none
	// with the registry token.
	if got := u.Count("GET blob"); got != 3 {
		t.Errorf(`Count("GET blob") = %d, want 3`, got)
	}
	if got := u.Count("GET cdn"); got != 3 {
		t.Errorf(`Count("GET cdn") = %d, want 3`, got)
	}
	if got := u.CountHost("cdn.test"); got != 3 {
		t.Errorf(`CountHost("cdn.test") = %d, want 3`, got)
	}
	if got := u.Count("GET token"); got != 1 {
		t.Errorf(`Count("GET token") = %d, want 1`, got)
	}
	if got := u.CDNSawAuthorization(); got != 0 {
		t.Errorf("CDNSawAuthorization() = %d, want 0", got)
	}

	var terr *transport.Error
	if err := pull("private/app", authn.Anonymous); !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous pull of private/app: %v, want a 401", err)
	}
	if err := pull("private/app", &authn.Basic{Username: HubUser, Password: HubPassword}); err != nil {
		t.Errorf("pull of private/app as HubUser: %v", err)
	}
}
