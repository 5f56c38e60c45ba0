package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/cachestore/azure"
	"github.com/regproxy/regproxy/internal/azuritetest"
)

// TestCacheOnAzure runs every cache command with --storage azure, as serve
// is given it, on a container in Azurite holding the image cache: stats,
// ls, rm (in the container and the local tier), verify (of both) and gc
// --older-than, which on Azure goes by the blobs' last access (Azurite
// keeps none: their last commit).
func TestCacheOnAzure(t *testing.T) {
	az := azuritetest.New(t)
	name := az.Container()
	ctx := t.Context()
	store, err := azure.New(ctx, azure.Config{ConnectionString: az.ConnectionString(), Container: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	c := fillImageCache(t, store)
	dataDir := t.TempDir()
	flags := []string{"--storage", "azure", "--azure-connection-string", az.ConnectionString(), "--azure-container", name,
		"--data-dir", dataDir}
	// run runs cache COMMAND ARGS… with flags before ARGS.
	run := func(args ...string) (int, string, string) {
		t.Helper()
		return runCLI(t, slices.Concat(args[:2], flags, args[2:])...)
	}
	inContainer := func(key string) bool {
		_, err := store.Stat(ctx, key)
		return err == nil
	}

	// stats: every entry, by kind; no free space (no filesystem).
	code, stdout, stderr := run("cache", "stats", "--json")
	if code != 0 {
		t.Fatalf("stats: exit %d, %s", code, stderr)
	}
	var st statsOutput
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blobs.Entries != 9 || st.Manifests.Entries != 5 || st.Tags.Entries != 5 || st.Free != nil || st.OldestUse == nil {
		t.Errorf("stats: %s", stdout)
	}

	// ls: the same tags and repositories as on disk.
	out := lsJSON(t, slices.Concat([]string{"--repo", "app"}, flags)...)
	if len(out.Tags) != 2 || out.Tags[0].Name != "r.test/app:v1" || out.Tags[0].Records != 2 || out.Tags[1].Digest != c.I2 {
		t.Errorf("ls --repo app: tags %+v", out.Tags)
	}
	if len(out.Blobs) != 5 {
		t.Errorf("ls --repo app: %d blobs, want 5", len(out.Blobs))
	}

	// rm: a tag's records from the container; a blob from the container
	// and from the local tier.
	local, err := cachestore.NewDisk(filepath.Join(dataDir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	f := &cacheFixture{t: t, store: local}
	f.blob('e', 512<<10, day) // c.L3
	f.blob('c', 1<<20, day)   // c.L2
	if code, stdout, stderr := run("cache", "rm", "r.test/app:v1", c.L3.String()); code != 0 {
		t.Fatalf("rm: exit %d, %s%s", code, stdout, stderr)
	}
	for _, key := range []string{c.V1a, c.V1b, cachestore.BlobKey(c.L3)} {
		if inContainer(key) {
			t.Errorf("after rm, %s is still in the container", key)
		}
	}
	if !inContainer(c.V2) {
		t.Errorf("rm of app:v1 removed app:v2")
	}
	if _, err := local.Stat(ctx, cachestore.BlobKey(c.L3)); err == nil {
		t.Errorf("after rm, blob %s is still in the local tier", c.L3)
	}
	if code, _, stderr := run("cache", "rm", c.L3.String()); code != 1 || !strings.Contains(stderr, "not in the cache: "+c.L3.String()) {
		t.Errorf("rm again: exit %d, %q; want 1", code, stderr)
	}

	// verify: a blob overwritten in the container behind the store's
	// back, and one corrupted in the local tier.
	corruptBlob(t, az, name, cachestore.BlobKey(c.L4))
	corrupt(t, dataDir, cachestore.BlobKey(c.L2)) // the local tier is DATA_DIR/cache
	code, stdout, stderr = run("cache", "verify")
	if code != 1 {
		t.Fatalf("verify: exit %d, %s%s; want 1", code, stdout, stderr)
	}
	for _, want := range []string{"corrupt: blob " + c.L4.String() + " (", "corrupt: blob " + c.L2.String() + " (local tier)",
		"verified 14 entries", "2 corrupt, 2 removed"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("verify's output has no %q:\n%s", want, stdout)
		}
	}
	if inContainer(cachestore.BlobKey(c.L4)) {
		t.Error("the corrupt blob is still in the container")
	}
	if !inContainer(cachestore.BlobKey(c.L2)) {
		t.Error("the intact blob the local tier had a corrupt copy of is gone from the container")
	}
	if code, stdout, _ := run("cache", "verify"); code != 0 {
		t.Errorf("second verify: exit %d\n%s", code, stdout)
	}

	// gc --older-than, three days on: nothing was used for five days, and
	// everything was for one.
	saved := cacheNow
	t.Cleanup(func() { cacheNow = saved })
	cacheNow = func() time.Time { return time.Now().Add(72 * time.Hour) }
	code, stdout, stderr = run("cache", "gc", "--older-than", "5d")
	if code != 0 || !strings.HasPrefix(stdout, "evicted 0 entries") {
		t.Errorf("gc --older-than 5d: exit %d, %s%s; want nothing evicted", code, stdout, stderr)
	}
	code, stdout, stderr = run("cache", "gc", "--older-than", "1d", "--json")
	var gc gcOutput
	if code != 0 || json.Unmarshal([]byte(stdout), &gc) != nil {
		t.Fatalf("gc --older-than 1d: exit %d, %s%s", code, stdout, stderr)
	}
	left := 0
	err = store.Walk(ctx, func(e cachestore.Entry) error { left++; return nil })
	if err != nil || left != 0 || gc.Cache.Entries != 0 || gc.Evicted.Entries != 15 {
		t.Errorf("gc --older-than 1d: %+v, %d entries left in the container (%v); want all 15 evicted", gc, left, err)
	}
}

// corruptBlob overwrites key's blob in the container with other bytes, as
// a fault would, without the store's digest check.
func corruptBlob(t *testing.T, az *azuritetest.Azurite, name, key string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	cc, err := container.NewClientFromConnectionString(az.ConnectionString(), name,
		&container.ClientOptions{ClientOptions: policy.ClientOptions{Transport: hc}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := cc.NewBlockBlobClient(key).UploadBuffer(ctx, bytes.Repeat([]byte("x"), 1000), nil); err != nil {
		t.Fatal(err)
	}
	if d, _ := keyDigest(key); digest.FromBytes(bytes.Repeat([]byte("x"), 1000)) == d {
		t.Fatal("the corrupt bytes match the digest")
	}
}
