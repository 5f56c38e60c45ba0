package proxy_test

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/internal/azuritetest"
)

// Replicas: proxies with data dirs of their own, in front of one upstream,
// sharing one Azure container.

// newAzureEnv is newEnv on a container of az.
func newAzureEnv(t *testing.T, az *azuritetest.Azurite, container string) *env {
	t.Helper()
	e := newEnv(t)
	e.useAzure(az, container)
	e.restart()
	return e
}

// replica starts another proxy in front of e's upstream, with a data dir
// of its own, on container.
func (e *env) replica(az *azuritetest.Azurite, container string) *env {
	e.t.Helper()
	r := &env{t: e.t, up: e.up, dataDir: e.t.TempDir(), clock: e.clock, ttl: e.ttl, registries: e.registries}
	r.useAzure(az, container)
	r.start()
	e.t.Cleanup(func() { r.stop() })
	return r
}

// TestAzureReplicaServesWhatAnotherFilled pulls through A, then through B:
// B asks upstream for no blob and no manifest, and neither keeps a blob
// locally.
func TestAzureReplicaServesWhatAnotherFilled(t *testing.T) {
	az := azuritetest.Shared(t)
	container := az.Container()
	a := newAzureEnv(t, az, container)
	b := a.replica(az, container)
	img := a.up.RandomImage(t, 3, 256<<10)
	a.up.Push(t, "team/app", "v1", img)
	want, _ := img.Digest()

	a.pull("team/app", "v1")
	a.waitCommitted()
	a.up.ResetCounts()
	if got := b.pull("team/app", "v1"); got != want {
		t.Fatalf("pull through B: digest %s, want %s", got, want)
	}
	if n := a.up.Count("GET blob") + a.up.Count("GET manifest"); n != 0 {
		t.Fatalf("pull through B after A: %d upstream blob and manifest GETs; want 0", n)
	}
	for _, e := range []*env{a, b} {
		e.wantNoLocalBlobs()
	}
}

// TestAzureReplicasFillOneBlobAtOnce asks A and B for one cold blob at
// once: each fills it, both clients get it, one commit wins and the other
// is a no-op, and a third replica then serves it without upstream.
func TestAzureReplicasFillOneBlobAtOnce(t *testing.T) {
	az := azuritetest.Shared(t)
	container := az.Container()
	a := newAzureEnv(t, az, container)
	b := a.replica(az, container)
	d, want := oneLayer(t, a, 8<<20)
	// Both fills run long enough to overlap.
	a.up.SetFault(slowBlob(want, 16, 25*time.Millisecond))
	url := "https://" + a.up.Host + "/v2/r/blobs/" + d.String()
	var wg sync.WaitGroup
	for _, e := range []*env{a, b} {
		c := e.client()
		for range 3 {
			wg.Go(func() { getVerified(t, c, url, d) })
		}
	}
	wg.Wait()
	if n := a.up.Count("GET blob"); n != 2 {
		t.Errorf("A and B filling at once: %d upstream blob GETs; want 2, one each", n)
	}
	a.waitCommitted()
	b.waitCommitted()
	a.up.SetFault(nil)
	a.up.ResetCounts()
	c := a.replica(az, container)
	getVerified(t, c.client(), url, d)
	if n := a.up.Count("GET blob"); n != 0 {
		t.Errorf("a third replica: %d upstream blob GETs; want 0", n)
	}
}

// TestAzureStagesWhileFilling checks that a fill uploads blocks while it
// downloads (uncommitted, so invisible), and that its blob is visible soon
// after the last upstream byte rather than after a second upload.
func TestAzureStagesWhileFilling(t *testing.T) {
	az := azuritetest.Shared(t)
	container := az.Container()
	e := newAzureEnv(t, az, container)
	d, want := oneLayer(t, e, 32<<20)
	e.up.SetFault(slowBlob(want, 32, 30*time.Millisecond)) // about 1s
	key := cachestore.BlobKey(digest.Digest(d.String()))
	bb := blockBlob(t, az, container, key)

	resp, err := e.client().Get("https://" + e.up.Host + "/v2/r/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.CopyN(io.Discard, resp.Body, int64(len(want)/2)); err != nil {
		t.Fatal(err)
	}
	staged := uncommittedBlocks(t, bb)
	if staged == 0 {
		t.Error("half way through the fill, no block is staged in Azure")
	}
	if visible(t, bb) {
		t.Fatal("half a blob is visible in Azure")
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(rest, want[len(want)/2:]) {
		t.Fatalf("second half: %d bytes, %v", len(rest), err)
	}
	lastByte := time.Now()
	for !visible(t, bb) {
		if time.Since(lastByte) > 10*time.Second {
			t.Fatal("the blob is not visible in Azure 10s after its last byte")
		}
		time.Sleep(5 * time.Millisecond)
	}
	lag := time.Since(lastByte)
	t.Logf("%d blocks staged half way; blob visible %v after the client's last byte", staged, lag)
	if lag > 2*time.Second {
		t.Errorf("blob visible %v after its last byte; want within about a second", lag)
	}
}

// blockBlob is a client of key's blob in container, for what the store
// does not show: uncommitted blocks.
func blockBlob(t *testing.T, az *azuritetest.Azurite, containerName, key string) *blockblob.Client {
	t.Helper()
	cred, err := blob.NewSharedKeyCredential(azuritetest.Account, azuritetest.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := container.NewClientWithSharedKeyCredential(az.Endpoint+"/"+containerName, cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.NewBlockBlobClient(key)
}

// uncommittedBlocks counts the blocks staged but not committed in bb.
func uncommittedBlocks(t *testing.T, bb *blockblob.Client) int {
	t.Helper()
	resp, err := bb.GetBlockList(context.Background(), blockblob.BlockListTypeUncommitted, nil)
	if err != nil {
		t.Fatalf("get the uncommitted block list: %v", err)
	}
	if resp.UncommittedBlocks == nil {
		return 0
	}
	return len(resp.UncommittedBlocks)
}

// visible reports whether bb exists, committed.
func visible(t *testing.T, bb *blockblob.Client) bool {
	t.Helper()
	_, err := bb.GetProperties(context.Background(), nil)
	if err != nil && !bloberror.HasCode(err, bloberror.BlobNotFound) {
		t.Fatalf("blob properties: %v", err)
	}
	return err == nil
}
