package testupstream

import "github.com/regproxy/regproxy/internal/testpki"

// certNames are the DNS names the server certificate is valid for, besides
// IP 127.0.0.1. Several names let tests play a second registry, a token
// server or a blob CDN on the same listener. registry-1.docker.io lets one
// play Docker Hub's registry API (WithHostName), for clients that only
// ever ask Hub, such as dockerd's registry-mirrors; regproxy reaches it by
// --resolve, and the fixture's transport never dials the real one.
var certNames = []string{"registry.test", "registry2.test", "auth.test", "cdn.test", "registry-1.docker.io"}

// newPKI makes the fixture's own CA and server certificate. Each Upstream
// makes a fresh one, so no key is shared between tests.
func newPKI() (*testpki.PKI, error) {
	return testpki.New("testupstream CA", certNames)
}
