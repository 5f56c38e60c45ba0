package ca

import (
	"strconv"
	"testing"
)

// BenchmarkLeafCached measures the handshake path once a host is warm.
func BenchmarkLeafCached(b *testing.B) {
	c := newTestCA(b, Options{})
	if _, err := c.Leaf("registry.test"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Leaf("registry.test"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLeafCachedParallel shows contention on the cache's lock, which
// every TLS handshake of the proxy takes.
func BenchmarkLeafCachedParallel(b *testing.B) {
	c := newTestCA(b, Options{})
	if _, err := c.Leaf("registry.test"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Leaf("registry.test"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkLeafMint measures a first visit: a fresh host each iteration, so
// every call signs a new leaf.
func BenchmarkLeafMint(b *testing.B) {
	c := newTestCA(b, Options{})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := c.Leaf("h" + strconv.Itoa(i) + ".registry.test"); err != nil {
			b.Fatal(err)
		}
	}
}
