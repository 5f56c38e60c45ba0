package storetest

import (
	"errors"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

func testDigestMismatch(t *testing.T, s cachestore.Store) {
	data := data(3, 3000)
	tests := []struct {
		name    string
		d       digest.Digest
		wantErr error // nil: any error will do
	}{
		{"other content", digest.FromString("other"), cachestore.ErrDigestMismatch},
		{"one byte short", digest.FromBytes(data[1:]), cachestore.ErrDigestMismatch},
		{"sha512 of other content", digest.SHA512.FromString("other"), cachestore.ErrDigestMismatch},
		{"malformed", digest.Digest("sha256:zz"), nil},
		{"unknown algorithm", digest.Digest("md5:" + digest.FromBytes(data).Encoded()), nil},
	}
	for i, tt := range tests {
		for _, opts := range []cachestore.Options{record, typed(manifestType)} {
			t.Run(tt.name+"/"+opts.Kind.String(), func(t *testing.T) {
				t.Parallel()
				key := cachestore.TagKey(string(rune('a'+i)) + opts.Kind.String())
				w, err := s.Create(t.Context(), key, opts)
				if err != nil {
					t.Fatalf("Create: %v", err)
				}
				writeChunks(t, w, data)
				err = w.Commit(t.Context(), tt.d)
				if err == nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("Commit(%s) = %v, want %v", tt.d, err, tt.wantErr)
				}
				if err := w.Cancel(); err != nil {
					t.Errorf("Cancel after failed Commit = %v, want nil", err)
				}
				wantNotFound(t, s, key)
			})
		}
	}
}

func testCancel(t *testing.T, s cachestore.Store) {
	data := data(4, 3000)
	d := digest.FromBytes(data)
	key := cachestore.BlobKey(d)
	w, err := s.Create(t.Context(), key, content)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	writeChunks(t, w, data)
	if err := w.Cancel(); err != nil {
		t.Fatalf("Cancel = %v, want nil", err)
	}
	wantNotFound(t, s, key)
	if _, err := w.Write(data); err == nil {
		t.Error("Write after Cancel = nil, want an error")
	}
	if err := w.Commit(t.Context(), d); err == nil {
		t.Error("Commit after Cancel = nil, want an error")
	}
	if err := w.Cancel(); err != nil {
		t.Errorf("second Cancel = %v, want nil", err)
	}
	wantNotFound(t, s, key)
}

func testCancelAfterCommit(t *testing.T, s cachestore.Store) {
	data := data(5, 3000)
	d := digest.FromBytes(data)
	key := cachestore.BlobKey(d)
	w, err := s.Create(t.Context(), key, content)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	writeChunks(t, w, data)
	if err := w.Commit(t.Context(), d); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := w.Cancel(); err != nil {
		t.Errorf("Cancel after Commit = %v, want nil", err)
	}
	if _, err := w.Write(data); err == nil {
		t.Error("Write after Commit = nil, want an error")
	}
	if err := w.Commit(t.Context(), d); err == nil {
		t.Error("second Commit = nil, want an error")
	}
	wantContent(t, s, key, data)
}

// testConcurrentWriters has several writers of one key interleave their
// writes and commits, as concurrent fills of one blob would.
func testConcurrentWriters(t *testing.T, s cachestore.Store) {
	const writers = 4
	data := data(6, 256<<10)
	d := digest.FromBytes(data)
	key := cachestore.BlobKey(d)
	ws := make([]cachestore.Writer, writers)
	for i := range ws {
		w, err := s.Create(t.Context(), key, content)
		if err != nil {
			t.Fatalf("Create %d: %v", i, err)
		}
		defer w.Cancel()
		ws[i] = w
	}
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Go(func() {
			for p := data; len(p) > 0 && errs[i] == nil; p = p[min(len(p), 4096):] {
				_, errs[i] = w.Write(p[:min(len(p), 4096)])
			}
			if errs[i] == nil {
				errs[i] = w.Commit(t.Context(), d)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	wantContent(t, s, key, data)
}

// testContentFirstCommitWins commits a Content key a second time, with
// other bytes and another media type (which a caller never does, but which
// shows what the store kept): the commit succeeds and changes nothing. The
// same for a key committed twice with the same bytes, small and spanning
// blocks, as two fills of one blob do one after the other.
func testContentFirstCommitWins(t *testing.T, s cachestore.Store) {
	key := cachestore.ManifestKey(digest.FromString("first"))
	first, second := data(30, 700), data(31, 300)
	put(t, s, key, typed(manifestType), first)
	put(t, s, key, typed("application/vnd.oci.image.index.v1+json"), second)
	wantEntry(t, s, key, first, manifestType)
	put(t, s, key, content, second)
	wantEntry(t, s, key, first, manifestType)

	for _, n := range []int{10, 300<<10 + 1} {
		blob := data(32, n)
		key := cachestore.BlobKey(digest.FromBytes(blob))
		put(t, s, key, content, blob)
		put(t, s, key, content, blob)
		wantEntry(t, s, key, blob, "")
	}
}

// testRecordOverwrite commits records under one key, as happens when a tag
// moves: each commit replaces the entry, media type included, whether the
// new one is larger or smaller, typed or not.
func testRecordOverwrite(t *testing.T, s cachestore.Store) {
	key := cachestore.TagKey("0123abcd")
	steps := []struct {
		data      []byte
		mediaType string
	}{
		{data(7, 300), ""},
		{data(8, 200), ""},
		{data(9, 400), "application/vnd.oci.image.index.v1+json"},
		{data(10, 100), "application/vnd.oci.image.manifest.v1+json"},
		{data(11, 5000), ""},
		{data(12, 50), "text/plain"},
	}
	for _, st := range steps {
		put(t, s, key, cachestore.Options{Kind: cachestore.Record, MediaType: st.mediaType}, st.data)
		wantEntry(t, s, key, st.data, st.mediaType)
	}
}
