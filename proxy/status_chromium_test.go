package proxy_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// A headless Chromium for the status page tests: Debian's chromium, driven
// over the DevTools protocol by chromedp. scripts/install-test-deps.sh
// installs it; a test that needs it fails, never skips, without it.

// Bounds of the browser's steps. The browser as a whole lives at most
// browserLife; its start is bounded by that alone, since a shorter
// context on chromedp's first Run would stop the browser when it ends.
const (
	browserLife = 3 * time.Minute
	browserStep = 30 * time.Second
)

// browser is one headless Chromium tab, and what it saw: every URL it
// asked for, and every console error, exception or security message.
type browser struct {
	t   *testing.T
	ctx context.Context // the tab's

	mu       sync.Mutex // protects requests and problems, which the tab's events fill
	requests []string
	problems []string
}

func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium on PATH: scripts/install-test-deps.sh installs Debian's chromium")
	return ""
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	b := &browser{t: t}
	life, cancelLife := context.WithTimeout(context.Background(), browserLife)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 1024),
		// Nothing but the proxy port may be reached: no system proxy, and
		// none of Chromium's own calls home.
		chromedp.Flag("no-proxy-server", true), chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(life, opts...)
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithListener(b.listen))
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc() // waits for the browser to exit
		cancelLife()
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	b.ctx = ctx
	return b
}

// listen runs on the tab's event loop: it only notes.
func (b *browser) listen(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		b.requests = append(b.requests, ev.Request.URL)
	case *log.EventEntryAdded:
		if ev.Entry.Level == log.EntryLevelError || ev.Entry.Source == log.EntrySourceSecurity {
			b.problems = append(b.problems, fmt.Sprintf("%s %s: %s", ev.Entry.Source, ev.Entry.Level, ev.Entry.Text))
		}
	case *runtime.EventExceptionThrown:
		b.problems = append(b.problems, "exception: "+ev.ExceptionDetails.Text)
	}
}

// do runs one step under its own timeout.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserStep)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression under a step's timeout.
func eval[T any](b *browser, what, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserStep)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
	return v
}

// artifactDir is where tests keep files for people to look at:
// $REGPROXY_ARTIFACTS, else .cache/artifacts in the work tree, which git
// ignores.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("REGPROXY_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", ".cache", "artifacts")
	}
	dir, err := filepath.Abs(dir)
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err != nil {
		t.Fatalf("artifact directory: %v", err)
	}
	return dir
}

// keepScreenshot saves the page as it is now, for people to look at.
func keepScreenshot(t *testing.T, b *browser) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserStep)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(artifactDir(t), "status-page.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("status page screenshot: %s", path)
}
