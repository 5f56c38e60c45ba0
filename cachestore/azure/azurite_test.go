package azure

import (
	"net"
	"testing"

	"github.com/regproxy/regproxy/internal/azuritetest"
)

// Azurite's development account (see azuritetest).
const (
	devAccount = azuritetest.Account
	devKey     = azuritetest.Key
)

// azuriteEndpoint returns the endpoint of the test binary's shared Azurite,
// starting it on first use; TestMain stops it. A missing azurite-blob fails
// the test: it is never skipped.
func azuriteEndpoint(t testing.TB) string {
	t.Helper()
	return azuritetest.Shared(t).Endpoint
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
