package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/vbauerster/cupwriter"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/regproxy/regproxy/internal/bytesize"
)

// reporter shows warm's progress on stderr: a bar per image in flight on a
// terminal, plain lines otherwise. The summary is warmSummary's, on stdout.
type reporter interface {
	start(name string) imageReport
	wait() // every image is done: the last of the progress is written
}

// imageReport is the progress of one image.
type imageReport interface {
	total(res imageResult) // its manifests are read: res says what its blobs are
	add(n int64)           // n more bytes of its blobs are in the cache; safe for concurrent use
	done(res imageResult)  // it is warmed, or failed
}

// newReporter returns bars when stderr, under the log buffer, is a
// terminal, and lines otherwise.
func newReporter(stderr io.Writer) reporter {
	under := stderr
	if lw, ok := stderr.(*logWriter); ok {
		under = lw.w
	}
	// A terminal that says it has no columns (a pty nobody sized) gets lines.
	if f, ok := under.(*os.File); ok && term.IsTerminal(int(f.Fd())) && termWidth(int(f.Fd())) > 0 {
		cw := cupwriter.New(stderr, false) // through the buffer, to keep stderr in order
		cw.SetTermFd(int(f.Fd()))
		return newBarReporter(mpb.WithConsoleWriter(cw))
	}
	return newLineReporter(stderr, lineProgressEvery)
}

func termWidth(fd int) int {
	w, _, err := term.GetSize(fd)
	if err != nil {
		return 0
	}
	return w
}

// resultLine says what warming an image did.
func resultLine(res imageResult) string {
	if res.err != nil {
		return fmt.Sprintf("%s: FAILED: %v", res.name, res.err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: warmed %s, %s, %s: %s fetched upstream, %s already cached", res.name,
		plural(res.manifests, "manifest"), plural(res.blobs, "blob"), bytesize.Format(res.size),
		bytesize.Format(res.upstream), bytesize.Format(res.cached))
	if shared := res.size - res.upstream - res.cached - res.unreported; shared > 0 {
		fmt.Fprintf(&b, ", %s downloaded for another image", bytesize.Format(shared))
	}
	if res.unreported > 0 {
		fmt.Fprintf(&b, ", %s not reported (no X-Cache)", bytesize.Format(res.unreported))
	}
	return b.String()
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// warmSummary writes the run's summary to w, and returns the exit error
// when any image failed.
func warmSummary(w io.Writer, results []imageResult) error {
	var sum tally
	var failed []imageResult
	for _, r := range results {
		sum.downloaded += r.downloaded
		sum.upstream += r.upstream
		sum.cached += r.cached
		sum.unreported += r.unreported
		if r.err != nil {
			failed = append(failed, r)
		}
	}
	fmt.Fprintf(w, "warmed %d of %s; downloaded %s, %s: %s fetched upstream, %s already cached",
		len(results)-len(failed), plural(len(results), "image"), plural(sum.downloaded, "blob"),
		bytesize.Format(sum.upstream+sum.cached+sum.unreported), bytesize.Format(sum.upstream), bytesize.Format(sum.cached))
	if sum.unreported > 0 {
		fmt.Fprintf(w, ", %s not reported (no X-Cache)", bytesize.Format(sum.unreported))
	}
	fmt.Fprintln(w)
	for _, r := range failed {
		fmt.Fprintf(w, "failed: %s: %v\n", r.name, r.err)
	}
	if len(failed) > 0 {
		return cli.Exit(fmt.Sprintf("%d of %s failed", len(failed), plural(len(results), "image")), 1)
	}
	return nil
}

// lineProgressEvery is how often plain lines report the images in flight.
const lineProgressEvery = 10 * time.Second

// lineReporter writes a line when an image's manifests are read, one when
// it is done, and, every so often, one for each image still downloading.
type lineReporter struct {
	w    io.Writer
	mu   sync.Mutex // guards live, and orders the lines
	live map[*lineReport]bool
	stop chan struct{} // closed by wait
	done chan struct{} // closed when the ticker's goroutine exits
}

func newLineReporter(w io.Writer, every time.Duration) *lineReporter {
	l := &lineReporter{w: w, live: map[*lineReport]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go l.tick(every)
	return l
}

func (l *lineReporter) tick(every time.Duration) {
	defer close(l.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.progress()
		}
	}
}

// progress writes a line for each image whose count moved since the last.
func (l *lineReporter) progress() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for r := range l.live {
		if n := r.n.Load(); n != r.shown && r.size > 0 {
			r.shown = n
			fmt.Fprintf(l.w, "%s: %s of %s\n", r.name, bytesize.Format(n), bytesize.Format(r.size))
		}
	}
}

func (l *lineReporter) println(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintln(l.w, s)
}

func (l *lineReporter) start(name string) imageReport {
	r := &lineReport{l: l, name: name}
	l.mu.Lock()
	l.live[r] = true
	l.mu.Unlock()
	return r
}

func (l *lineReporter) wait() {
	close(l.stop)
	<-l.done
}

type lineReport struct {
	l     *lineReporter
	name  string
	n     atomic.Int64
	size  int64 // set by total, under l.mu
	shown int64 // the count of the last progress line; under l.mu
}

func (r *lineReport) total(res imageResult) {
	r.l.mu.Lock()
	r.size = res.size
	r.l.mu.Unlock()
	r.l.println(fmt.Sprintf("%s: %s, %s, %s", r.name, plural(res.manifests, "manifest"), plural(res.blobs, "blob"), bytesize.Format(res.size)))
}

func (r *lineReport) add(n int64) { r.n.Add(n) }

func (r *lineReport) done(res imageResult) {
	r.l.mu.Lock()
	delete(r.l.live, r)
	r.l.mu.Unlock()
	r.l.println(resultLine(res))
}

// barReporter shows a bar for each image in flight; the line of an image
// done is printed above them.
type barReporter struct{ p *mpb.Progress }

func newBarReporter(opts ...mpb.ContainerOption) *barReporter {
	return &barReporter{p: mpb.New(opts...)}
}

func (b *barReporter) start(name string) imageReport {
	bar := b.p.AddBar(0, mpb.BarRemoveOnComplete(),
		mpb.PrependDecorators(decor.Name(name, decor.WCSyncSpaceR)),
		mpb.AppendDecorators(
			decor.CountersKibiByte("% .1f / % .1f", decor.WCSyncSpace),
			decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncSpace),
		))
	return &barReport{p: b.p, bar: bar}
}

func (b *barReporter) wait() { b.p.Wait() }

type barReport struct {
	p   *mpb.Progress
	bar *mpb.Bar
}

func (r *barReport) total(res imageResult) { r.bar.SetTotal(res.size, false) }
func (r *barReport) add(n int64)           { r.bar.IncrInt64(n) }

func (r *barReport) done(res imageResult) {
	fmt.Fprintln(r.p, resultLine(res)) // above the bars
	if res.err != nil {
		r.bar.Abort(true)
		return
	}
	r.bar.SetTotal(-1, true)
}
