package dockerhub_test

import (
	"slices"
	"testing"

	"github.com/regproxy/regproxy/internal/dockerhub"
)

func TestHosts(t *testing.T) {
	if got, want := dockerhub.APIHosts(), []string{"registry-1.docker.io", "index.docker.io", "docker.io"}; !slices.Equal(got, want) {
		t.Errorf("APIHosts() = %q, want %q (in this order: the preference of Hub credentials)", got, want)
	}
	hosts := dockerhub.Hosts()
	for _, h := range append(dockerhub.APIHosts(), dockerhub.TokenHost, "production.cloudflare.docker.com") {
		if !slices.Contains(hosts, h) {
			t.Errorf("Hosts() lacks %s", h)
		}
	}
	for _, tc := range []struct {
		host string
		want bool
	}{{"docker.io", true}, {"index.docker.io", true}, {"registry-1.docker.io", true}, {"auth.docker.io", false}, {"Docker.io", false}, {"quay.io", false}} {
		if got := dockerhub.IsAPIHost(tc.host); got != tc.want {
			t.Errorf("IsAPIHost(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
	dockerhub.APIHosts()[0] = "changed.example"
	if dockerhub.APIHosts()[0] != dockerhub.Registry {
		t.Error("APIHosts returned the package's own slice")
	}
}
