package fill_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"testing/synctest"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/fill"
)

// TestFillsReportsProgress: Fills lists each fill in flight, the largest
// first, with its size once upstream answered, the bytes received so far,
// its readers and joiners; a fill still waiting for upstream has no size;
// and a fill that ended is no longer listed.
func TestFillsReportsProgress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, cachestore.NewMemory(), 0)
		if got := g.Fills(); len(got) != 0 {
			t.Fatalf("Fills() = %v before any fill; want none", got)
		}
		big, dBig := randomBlob(t, 256<<10)
		small, dSmall := randomBlob(t, 64<<10)
		_, dWaiting := randomBlob(t, 10)

		// A fill whose upstream has not answered yet.
		waitCtx, cancelWait := context.WithCancel(t.Context())
		defer cancelWait()
		go g.Do(waitCtx, dWaiting, blocked)
		// Two fills streaming: the big one with a joiner, a third in.
		bigR, bigW := io.Pipe()
		leader := do(t, g, t.Context(), dBig, whole(bigR, len(big)), fill.Led)
		joiner := do(t, g, t.Context(), dBig, never(t), fill.Joined)
		smallR, smallW := io.Pipe()
		smallLeader := do(t, g, t.Context(), dSmall, whole(smallR, len(small)), fill.Led)
		third := len(big) / 3
		go bigW.Write(big[:third])
		go smallW.Write(small[:1000])
		synctest.Wait()

		want := []fill.Progress{
			{Digest: dBig, Size: int64(len(big)), Received: int64(third), Started: true, Readers: 2, Joiners: 1},
			{Digest: dSmall, Size: int64(len(small)), Received: 1000, Started: true, Readers: 1},
			{Digest: dWaiting, Size: -1},
		}
		got := g.Fills()
		if len(got) != len(want) {
			t.Fatalf("Fills() = %+v; want %+v", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("Fills()[%d] = %+v; want %+v", i, got[i], want[i])
			}
		}

		// The big fill completes: only the others are left.
		go func() { bigW.Write(big[third:]); bigW.Close() }()
		for _, r := range []io.Reader{leader, joiner} {
			if b, err := io.ReadAll(r); err != nil || !bytes.Equal(b, big) {
				t.Fatalf("read %d bytes, %v", len(b), err)
			}
		}
		synctest.Wait()
		if got := g.Fills(); len(got) != 2 || got[0].Digest != dSmall || got[1].Digest != dWaiting {
			t.Errorf("Fills() = %+v after the big fill ended; want the small one and the waiting one", got)
		}
		smallW.CloseWithError(io.ErrUnexpectedEOF)
		smallLeader.Close()
	})
}
