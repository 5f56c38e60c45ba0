package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// FuzzLoadTag feeds arbitrary bytes to the tag-record decoder as a stored
// record. The store also holds one manifest, which a record may name. A
// record is served only when it decodes, its digest is valid, and the
// manifest served is the one it names, with bytes that match that digest;
// a failed record is never cached.
func FuzzLoadTag(f *testing.F) {
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	stored := digest.FromBytes(body)
	good, _ := json.Marshal(tagRecord{Registry: "registry.test:443", Repository: "library/alpine", Tag: "latest",
		Accept: "application/vnd.oci.image.manifest.v1+json", Digest: stored, Validated: time.Unix(0, 0).UTC()})
	f.Add(good)
	for _, d := range []string{
		string(stored), strings.ToUpper(string(stored)), "sha256:" + strings.Repeat("0", 64),
		"sha256:" + stored.Encoded()[:63], "sha512:" + strings.Repeat("0", 128), "sha256:../../x", "", "latest",
	} {
		f.Add([]byte(`{"digest":"` + d + `"}`))
	}
	for _, s := range []string{`{"digest":1}`, `{"digest":null}`, `[]`, `null`, `{`, "", `{"digest":"\u0073ha256:` + stored.Encoded() + `"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, record []byte) {
		ctx := context.Background()
		c := newManifestCache(cachestore.NewMemory())
		if err := c.save(ctx, &cachedManifest{Body: body, ContentType: "application/vnd.oci.image.manifest.v1+json", Digest: stored}); err != nil {
			t.Fatal(err)
		}
		key := tagRecordKey("registry.test:443", "library/alpine", "latest", "", "")
		if err := c.write(ctx, key, cachestore.Options{Kind: cachestore.Record}, record, digest.FromBytes(record)); err != nil {
			t.Fatal(err)
		}
		rec, m, err := c.loadTag(ctx, key)
		var decoded tagRecord
		ok := len(record) <= maxRecordSize && json.Unmarshal(record, &decoded) == nil && decoded.Digest == stored
		if ok != (err == nil) {
			t.Fatalf("loadTag(%q) = %+v, %v; want served %v", record, rec, err, ok)
		}
		if err != nil {
			if m != nil || c.tags.Contains(key) && decoded.Digest.Validate() != nil {
				t.Fatalf("loadTag(%q) failed (%v) but returned manifest %v or cached the record", record, err, m)
			}
			return
		}
		if m == nil || m.Digest != rec.Digest || digest.FromBytes(m.Body) != rec.Digest {
			t.Fatalf("loadTag(%q) served %+v for digest %q", record, m, rec.Digest)
		}
	})
}

// FuzzTagRecordKey: tag records written by earlier versions keep their
// names. tagRecordKey hashes from a stack buffer; the name must stay the
// SHA-256 of the fields joined by newlines, however long they are.
func FuzzTagRecordKey(f *testing.F) {
	f.Add("registry.test:443", "library/alpine", "latest", "application/vnd.oci.image.index.v1+json", "")
	f.Add("registry-1.docker.io:443", "a/b", "v1", strings.Repeat("application/x,", 60), "ns=docker.io")
	f.Fuzz(func(t *testing.T, registry, repo, tag, accept, query string) {
		sum := sha256.Sum256([]byte(registry + "\n" + repo + "\n" + tag + "\n" + accept + "\n" + query))
		if got, want := tagRecordKey(registry, repo, tag, accept, query), cachestore.TagKey(hex.EncodeToString(sum[:])); got != want {
			t.Fatalf("tagRecordKey = %q; want %q", got, want)
		}
	})
}
