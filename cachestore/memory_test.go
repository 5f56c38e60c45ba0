package cachestore_test

import (
	"testing"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/storetest"
)

func TestMemory(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(*testing.T) func() cachestore.Store {
		m := cachestore.NewMemory()
		return func() cachestore.Store { return m }
	})
}
