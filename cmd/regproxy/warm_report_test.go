package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vbauerster/mpb/v8"
)

func TestResultLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		res  imageResult
		want string
	}{
		{imageResult{name: "alpine", manifests: 1, blobs: 2, size: 3 << 20, tally: tally{downloaded: 2, upstream: 3 << 20}},
			"alpine: warmed 1 manifest, 2 blobs, 3.0 MiB: 3.0 MiB fetched upstream, 0 B already cached"},
		{imageResult{name: "a:1", manifests: 3, blobs: 5, size: 5000, tally: tally{downloaded: 3, upstream: 1000, cached: 2000}},
			"a:1: warmed 3 manifests, 5 blobs, 4.9 KiB: 1000 B fetched upstream, 2.0 KiB already cached, 2.0 KiB downloaded for another image"},
		{imageResult{name: "b", manifests: 1, blobs: 1, size: 10, tally: tally{downloaded: 1, unreported: 10}},
			"b: warmed 1 manifest, 1 blob, 10 B: 0 B fetched upstream, 0 B already cached, 10 B not reported (no X-Cache)"},
		{imageResult{name: "c", err: errors.New("GET https://c/v2/: 503")}, "c: FAILED: GET https://c/v2/: 503"},
	} {
		if got := resultLine(tc.res); got != tc.want {
			t.Errorf("resultLine(%+v) =\n%q; want\n%q", tc.res, got, tc.want)
		}
	}
}

func TestWarmSummary(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	err := warmSummary(&b, []imageResult{
		{name: "a", tally: tally{downloaded: 2, upstream: 2048, cached: 1024}},
		{name: "b", err: errors.New("NAME_UNKNOWN"), tally: tally{downloaded: 1, cached: 1024, unreported: 5}},
		{name: "c"},
	})
	want := "warmed 2 of 3 images; downloaded 3 blobs, 4.0 KiB: 2.0 KiB fetched upstream, 2.0 KiB already cached, 5 B not reported (no X-Cache)\n" +
		"failed: b: NAME_UNKNOWN\n"
	if b.String() != want || err == nil || err.Error() != "1 of 3 images failed" {
		t.Errorf("warmSummary wrote\n%q, returned %v; want\n%q and 1 of 3 images failed", b.String(), err, want)
	}
}

// TestLineReporterProgress: an image still downloading gets a line every
// so often, while its count moves.
func TestLineReporterProgress(t *testing.T) {
	t.Parallel()
	var out syncBuffer
	l := newLineReporter(&out, 5*time.Millisecond)
	r := l.start("img")
	r.total(imageResult{manifests: 1, blobs: 2, size: 2048})
	r.add(1024)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "img: 1.0 KiB of 2.0 KiB\n") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // a few ticks more, with no change
	r.add(1024)
	r.done(imageResult{name: "img", manifests: 1, blobs: 2, size: 2048, tally: tally{downloaded: 2, cached: 2048}})
	l.wait()
	want := "img: 1 manifest, 2 blobs, 2.0 KiB\nimg: 1.0 KiB of 2.0 KiB\n" +
		"img: warmed 1 manifest, 2 blobs, 2.0 KiB: 0 B fetched upstream, 2.0 KiB already cached\n"
	if got := out.String(); got != want {
		t.Errorf("output\n%s\nwant\n%s", got, want)
	}
}

// TestBarReporter drives the bars as warm does, one image failing, and
// checks that each image's line is written and wait returns.
func TestBarReporter(t *testing.T) {
	t.Parallel()
	var out syncBuffer
	b := newBarReporter(mpb.WithOutput(&out), mpb.ForceTTY(), mpb.WithAutoRefresh(), mpb.WithWidth(80), mpb.WithRefreshRate(time.Millisecond))
	ok, bad := b.start("ok:1"), b.start("bad:1")
	ok.total(imageResult{size: 4096})
	for range 4 {
		ok.add(1024)
	}
	bad.total(imageResult{size: 100})
	bad.add(50)
	ok.done(imageResult{name: "ok:1", manifests: 1, blobs: 1, size: 4096, tally: tally{downloaded: 1, upstream: 4096}})
	bad.done(imageResult{name: "bad:1", err: errors.New("cut")})
	done := make(chan struct{})
	go func() { b.wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("wait did not return")
	}
	for _, want := range []string{"ok:1: warmed 1 manifest, 1 blob, 4.0 KiB: 4.0 KiB fetched upstream", "bad:1: FAILED: cut"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("bars' output has no %q:\n%q", want, out.String())
		}
	}
}
