package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
)

// TestCheckerCatchesBadBodies feeds the soak's body check what a broken
// proxy could send: it must count every wrong byte, and call a body that
// ends early without an error what it is.
func TestCheckerCatchesBadBodies(t *testing.T) {
	t.Parallel()
	data := make([]byte, 3*soakBufSize+123)
	rand.Read(data)
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	bl := &blob{path: path, size: int64(len(data)), digest: sha256Digest(data)}
	flipped := bytes.Clone(data)
	flipped[soakBufSize+7] ^= 1
	flipped[len(data)-1] ^= 0x80
	for _, tc := range []struct {
		name        string
		body        []byte
		first, last int64 // a Range when last > 0
		stop        int64
		wantWrong   int64 // at least
		wantEarly   bool
		wantCancel  bool
	}{
		{name: "whole and right", body: data, stop: -1},
		{name: "two bytes flipped", body: flipped, stop: -1, wantWrong: 2},
		{name: "ends early", body: data[:len(data)-1], stop: -1, wantEarly: true},
		{name: "too long", body: append(bytes.Clone(data), 1, 2, 3), stop: -1, wantWrong: 3},
		{name: "right range", body: data[100:5000], first: 100, last: 4999, stop: -1},
		// Shifted random bytes still match by chance, one in 256.
		{name: "range off by one", body: data[101:5001], first: 100, last: 4999, stop: -1, wantWrong: 4800},
		{name: "hung up partway", body: data, stop: 1000, wantCancel: true},
		{name: "hung up partway, wrong prefix", body: flipped, stop: 2 * soakBufSize, wantWrong: 1, wantCancel: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			chk := &checker{n: bl.size, digest: bl.digest}
			if tc.last > 0 {
				chk.off, chk.n, chk.digest = tc.first, tc.last-tc.first+1, ""
			}
			got := readBlobBody(context.Background(), bytes.NewReader(tc.body), bl, chk, tc.stop, func() {})
			if got.wrong < tc.wantWrong || (tc.wantWrong == 0 && got.wrong != 0) || got.early != tc.wantEarly || got.cancelled != tc.wantCancel {
				t.Errorf("got wrong %d, early %v, cancelled %v; want wrong %d, early %v, cancelled %v",
					got.wrong, got.early, got.cancelled, tc.wantWrong, tc.wantEarly, tc.wantCancel)
			}
		})
	}
}
