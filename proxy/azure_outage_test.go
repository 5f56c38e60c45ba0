package proxy_test

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/internal/azuritetest"
)

// TestAzureKilledMidFill stops Azurite while a fill downloads: the client
// still gets every byte, nothing is committed, the log says why, and once
// Azurite is back the same proxy caches the blob on its next fill.
func TestAzureKilledMidFill(t *testing.T) {
	az := azuritetest.New(t) // of its own: the test kills it
	container := az.Container()
	e := newEnv(t)
	e.stop()
	log := &syncBuffer{}
	e.logTo = log
	e.useAzure(az, container)
	e.start()
	d, want := oneLayer(t, e, 8<<20)
	e.up.SetFault(slowBlob(want, 32, 30*time.Millisecond)) // about 1s
	url := "https://" + e.up.Host + "/v2/r/blobs/" + d.String()

	resp, err := e.client().Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	head := make([]byte, len(want)/4)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	az.Kill()
	rest, err := io.ReadAll(resp.Body)
	if got := append(head, rest...); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("client of a fill whose store went away: %d bytes, %v; want the blob", len(got), err)
	}
	e.waitCommitted()
	if s := log.String(); !strings.Contains(s, "blob served but not cached") {
		t.Errorf("the log does not say the blob was not cached:\n%s", s)
	}

	if err := az.Restart(); err != nil {
		t.Fatal(err)
	}
	bb := blockBlob(t, az, container, cachestore.BlobKey(digest.Digest(d.String())))
	if visible(t, bb) {
		t.Fatal("a blob whose fill lost its store is visible")
	}
	e.up.SetFault(nil)
	e.up.ResetCounts()
	c := e.client()
	getVerified(t, c, url, d) // fills again, and commits
	e.waitCommitted()
	getVerified(t, c, url, d)
	if n := e.up.Count("GET blob"); n != 1 {
		t.Errorf("two GETs once Azurite is back: %d upstream blob GETs; want 1", n)
	}
	if !visible(t, bb) {
		t.Error("the blob is not in Azure once Azurite is back")
	}
}
