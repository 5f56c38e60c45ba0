package azure

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/storetest"
	"github.com/regproxy/regproxy/internal/azuritetest"
)

// TestMain stops the shared Azurite after the tests, then checks that no
// goroutine outlived them: a reader closed early or a writer canceled must
// leave no download or upload behind.
func TestMain(m *testing.M) {
	code := m.Run()
	azuritetest.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// containerSeq numbers the containers of the tests, one each.
var containerSeq atomic.Int64

// testConfig is a configuration for a new container in the shared Azurite.
// Its blocks are small, so that the suite's entries span many of them.
func testConfig(t testing.TB) Config {
	return Config{
		AccountName:    devAccount,
		AccountKey:     devKey,
		Endpoint:       azuriteEndpoint(t),
		Container:      fmt.Sprintf("test-%d", containerSeq.Add(1)),
		BlockSize:      64 << 10,
		BlocksInFlight: 3,
	}
}

// newStore returns a store for cfg, closed when the test ends.
func newStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestConformance runs the suite on a container per subtest, each store
// of it a replica of its own.
func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) func() cachestore.Store {
		cfg := testConfig(t)
		return func() cachestore.Store { return newStore(t, cfg) }
	})
}

// TestConformanceDefaults runs the suite with the default sizes, where
// every entry of the suite fits in one block and is put whole.
func TestConformanceDefaults(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) func() cachestore.Store {
		cfg := testConfig(t)
		cfg.BlockSize, cfg.BlocksInFlight = 0, 0
		return func() cachestore.Store { return newStore(t, cfg) }
	})
}
