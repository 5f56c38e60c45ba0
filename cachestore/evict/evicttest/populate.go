// Package evicttest helps tests and benchmarks fill a disk cache fast.
package evicttest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Populate writes n small blobs into a disk store's layout under root
// directly, with last uses spread over a year: committing them through the
// store would sync each, and take minutes.
func Populate(tb testing.TB, root string, n int) {
	tb.Helper()
	year := time.Now().Add(-365 * 24 * time.Hour)
	for i := range n {
		data := fmt.Appendf(nil, "entry %d", i)
		enc := digest.FromBytes(data).Encoded()
		dir := filepath.Join(root, "blobs", "sha256", enc[:2])
		if err := os.MkdirAll(dir, 0o755); err != nil {
			tb.Fatal(err)
		}
		p := filepath.Join(dir, enc)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			tb.Fatal(err)
		}
		t := year.Add(time.Duration(i*7919%n) * time.Minute)
		if err := os.Chtimes(p, time.Time{}, t); err != nil {
			tb.Fatal(err)
		}
	}
}
