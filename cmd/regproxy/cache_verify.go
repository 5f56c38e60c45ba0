package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/urfave/cli/v2"
	"github.com/vbauerster/cupwriter"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sync/errgroup"
	"golang.org/x/term"

	"github.com/regproxy/regproxy/cachestore"
	"github.com/regproxy/regproxy/internal/bytesize"
)

// cache verify reads every blob and manifest back and hashes it with the
// algorithm of its digest. An entry whose bytes do not match is removed
// with the store's conditional delete, on the condition that the entry is
// still the one that was hashed: were a server to commit the key again
// meanwhile (after evicting the corrupt copy), the new entry stays.

func cacheVerifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "re-hash every blob and manifest, and remove the corrupt ones (exit 1 if any)",
		ArgsUsage: " ",
		Flags: cacheFlags(
			&cli.IntFlag{Name: "parallel", Value: 4, Usage: "entries read at once"},
			&cli.BoolFlag{Name: "dry-run", Usage: "report corrupt entries, but leave them in place"},
		),
		OnUsageError: usageError,
		Action:       cacheVerify,
	}
}

// verifyOutput is what cache verify prints.
type verifyOutput struct {
	Entries int             `json:"entries"`
	Bytes   int64           `json:"bytes"`
	Corrupt []verifyProblem `json:"corrupt"`
	Errors  []verifyProblem `json:"errors"`
}

// verifyProblem is an entry that is corrupt, or that could not be read.
type verifyProblem struct {
	Key    string        `json:"key"`
	Digest digest.Digest `json:"digest"`
	// Store is "local" for the local tier of --storage azure, else "".
	Store string `json:"store,omitempty"`
	Size  int64  `json:"size"`
	// Actual is what the bytes hash to.
	Actual  digest.Digest `json:"actual,omitempty"`
	Removed bool          `json:"removed"`
	// Error says why a corrupt entry stays, or why an entry could not be
	// read.
	Error string `json:"error,omitempty"`
}

// verifyItem is an entry to verify.
type verifyItem struct {
	store cacheBackend
	local bool
	entry cachestore.Entry
	d     digest.Digest
}

func cacheVerify(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	parallel := c.Int("parallel")
	if parallel < 1 {
		return badFlag("parallel", fmt.Errorf("%d: want 1 or more", parallel))
	}
	cs, err := openCache(c)
	if err != nil {
		return err
	}
	defer cs.close()
	items, err := verifyItems(c.Context, cs)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	out := verifyOutput{Entries: len(items), Corrupt: []verifyProblem{}, Errors: []verifyProblem{}}
	for _, it := range items {
		out.Bytes += it.entry.Size
	}
	prog := newVerifyProgress(c.App.Writer, c.App.ErrWriter, len(items), out.Bytes, c.Bool("json"))
	var mu sync.Mutex
	g, ctx := errgroup.WithContext(c.Context)
	g.SetLimit(parallel)
	for _, it := range items {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error {
			p, corrupt := verifyEntry(ctx, it, c.Bool("dry-run"), prog.add)
			prog.entryDone()
			if p == nil {
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			if corrupt {
				out.Corrupt = append(out.Corrupt, *p)
			} else {
				out.Errors = append(out.Errors, *p)
			}
			prog.println(problemLine(*p, corrupt))
			return nil
		})
	}
	g.Wait()
	prog.wait()
	if err := c.Context.Err(); err != nil {
		return cli.Exit(fmt.Sprintf("cache verify: %v after %d of %s", err, prog.entries.Load(), entries(len(items))), 1)
	}
	byKey := func(a, b verifyProblem) int {
		return cmp.Or(strings.Compare(a.Store, b.Store), strings.Compare(a.Key, b.Key))
	}
	slices.SortFunc(out.Corrupt, byKey)
	slices.SortFunc(out.Errors, byKey)
	if c.Bool("json") {
		err = printJSON(c.App.Writer, out)
	} else {
		err = printVerify(c.App.Writer, out, c.Bool("dry-run"))
	}
	if err != nil {
		return err
	}
	switch {
	case len(out.Corrupt) > 0:
		return cli.Exit(fmt.Sprintf("cache verify: %s corrupt", entries(len(out.Corrupt))), 1)
	case len(out.Errors) > 0:
		return cli.Exit(fmt.Sprintf("cache verify: %s could not be read", entries(len(out.Errors))), 1)
	}
	return nil
}

// verifyItems walks the store, and with --storage azure its local tier, for
// the blobs and manifests to verify, in key order.
func verifyItems(ctx context.Context, cs *cacheStore) ([]verifyItem, error) {
	var items []verifyItem
	walk := func(s cacheBackend, local bool) error {
		seen := map[string]bool{}
		return s.Walk(ctx, func(e cachestore.Entry) error {
			if d, ok := keyDigest(e.Key); ok && !seen[e.Key] {
				seen[e.Key] = true
				items = append(items, verifyItem{store: s, local: local, entry: e, d: d})
			}
			return nil
		})
	}
	if err := walk(cs.backend, false); err != nil {
		return nil, err
	}
	if cs.local != nil {
		if err := walk(cs.local, true); err != nil {
			return nil, err
		}
	}
	slices.SortStableFunc(items, func(a, b verifyItem) int { return strings.Compare(a.entry.Key, b.entry.Key) })
	return items, nil
}

// verifyAttempts bounds how often an entry that changes while it is
// verified (its last use touched, the key committed again) is verified
// again.
const verifyAttempts = 3

// verifyEntry hashes the entry of it, reporting bytes read to progress. It
// returns nil for an entry that is intact or gone; else the problem, and
// whether the entry is corrupt (rather than unreadable). A corrupt entry
// is removed unless dryRun, if it is still the entry that was hashed.
func verifyEntry(ctx context.Context, it verifyItem, dryRun bool, progress func(int64)) (*verifyProblem, bool) {
	p := &verifyProblem{Key: it.entry.Key, Digest: it.d, Size: it.entry.Size}
	if it.local {
		p.Store = "local"
	}
	counted := int64(0) // what progress was told, so that a retry does not count twice
	for range verifyAttempts {
		p.Actual = ""
		before, err := it.store.Stat(ctx, it.entry.Key)
		if errors.Is(err, cachestore.ErrNotFound) {
			break // removed since the walk
		}
		if err != nil {
			p.Error = err.Error()
			return p, false
		}
		p.Size = before.Size
		actual, err := hashEntry(ctx, it.store, it.entry.Key, it.d.Algorithm(), func(n int64) {
			if counted < it.entry.Size {
				k := min(n, it.entry.Size-counted)
				counted += k
				progress(k)
			}
		})
		if errors.Is(err, cachestore.ErrNotFound) {
			break
		}
		if err != nil {
			p.Error = err.Error()
			return p, false
		}
		if actual == it.d {
			break
		}
		p.Actual = actual
		if dryRun {
			return p, true
		}
		same := func() bool {
			// A stat, and no lock: the disk store's Stat takes none, and
			// the Azure store's DeleteIf holds none while cond runs.
			now, err := it.store.Stat(ctx, it.entry.Key)
			return err == nil && now.Size == before.Size && now.LastUse.Equal(before.LastUse)
		}
		deleted, err := it.store.DeleteIf(ctx, it.entry.Key, same)
		switch {
		case deleted:
			p.Removed = true
			return p, true
		case errors.Is(err, cachestore.ErrNotFound):
			p.Error = "removed meanwhile by another process"
			return p, true
		case err != nil:
			p.Error = "cannot remove it: " + err.Error()
			return p, true
		}
		// Changed since it was hashed: verify it again.
	}
	if counted < it.entry.Size {
		progress(it.entry.Size - counted)
	}
	if p.Actual != "" && !p.Removed {
		p.Error = "it changed each time it was verified; left in place"
		return p, true
	}
	return nil, false
}

// hashEntry reads key's entry whole and returns its digest with alg.
func hashEntry(ctx context.Context, s cachestore.Store, key string, alg digest.Algorithm, progress func(int64)) (digest.Digest, error) {
	r, err := s.Open(ctx, key)
	if err != nil {
		return "", err
	}
	defer r.Close()
	h := alg.Hash()
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := r.Read(buf)
		h.Write(buf[:n])
		progress(int64(n))
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("read %s: %w", key, err)
		}
	}
	return digest.NewDigest(alg, h), nil
}

// kindOfKey names what a blob's or manifest's key holds.
func kindOfKey(key string) string {
	if strings.HasPrefix(key, "manifests/") {
		return "manifest"
	}
	return "blob"
}

// problemLine is a verify problem as a line for people.
func problemLine(p verifyProblem, corrupt bool) string {
	where := ""
	if p.Store != "" {
		where = " (" + p.Store + " tier)"
	}
	what := fmt.Sprintf("%s %s%s (%s)", kindOfKey(p.Key), p.Digest, where, bytesize.Format(p.Size))
	if !corrupt {
		return fmt.Sprintf("error: %s: %s", what, p.Error)
	}
	fate := "removed"
	switch {
	case p.Error != "":
		fate = p.Error
	case !p.Removed:
		fate = "left in place (--dry-run)"
	}
	return fmt.Sprintf("corrupt: %s hashes to %s: %s", what, p.Actual, fate)
}

func printVerify(w io.Writer, out verifyOutput, dryRun bool) error {
	fmt.Fprintf(w, "verified %s (%s): ", entries(out.Entries), bytesize.Format(out.Bytes))
	switch {
	case len(out.Corrupt) == 0 && len(out.Errors) == 0:
		fmt.Fprintln(w, "all intact")
	default:
		removed := 0
		for _, p := range out.Corrupt {
			if p.Removed {
				removed++
			}
		}
		fmt.Fprintf(w, "%d corrupt, %d removed", len(out.Corrupt), removed)
		if dryRun {
			fmt.Fprint(w, " (--dry-run)")
		}
		if len(out.Errors) > 0 {
			fmt.Fprintf(w, ", %s could not be read", entries(len(out.Errors)))
		}
		fmt.Fprintln(w)
	}
	return nil
}

// verifyProgress shows verify's progress on stderr: a bar of bytes and
// entries, with rate and time left, on a terminal; a line every
// lineProgressEvery otherwise. Problem lines go to stdout as they are
// found (through the bar when stdout is the same terminal, so that they
// do not garble it); with --json, into the JSON only.
type verifyProgress struct {
	entries       atomic.Int64
	bytes         atomic.Int64
	total         int
	totalBytes    int64
	out           io.Writer // where problem lines go; nil with --json
	stdout        io.Writer
	bar           *mpb.Bar // nil without a terminal
	p             *mpb.Progress
	lines         io.Writer // progress lines, without a terminal
	stop, stopped chan struct{}
	mu            sync.Mutex   // orders the lines
	flush         func() error // writes out the log buffer of stderr; nil if none
}

func newVerifyProgress(stdout, stderr io.Writer, total int, totalBytes int64, jsonOut bool) *verifyProgress {
	v := &verifyProgress{total: total, totalBytes: totalBytes, out: stdout, stdout: stdout,
		stop: make(chan struct{}), stopped: make(chan struct{})}
	if jsonOut {
		v.out = nil
	}
	if lw, ok := stderr.(*logWriter); ok {
		v.flush = lw.flush
	}
	if f, ok := terminal(stderr); ok {
		cw := cupwriter.New(stderr, false) // through the log buffer, to keep stderr in order
		cw.SetTermFd(int(f.Fd()))
		v.startBar(mpb.WithConsoleWriter(cw))
		if _, ok := terminal(stdout); ok && v.out != nil {
			v.out = v.p // above the bar
		}
		close(v.stopped)
		return v
	}
	v.lines = stderr
	go v.tick(lineProgressEvery)
	return v
}

// terminal returns the terminal that w writes to, if it is one (under the
// log buffer, for stderr) that says how wide it is, as warm's newReporter
// asks.
func terminal(w io.Writer) (*os.File, bool) {
	if lw, ok := w.(*logWriter); ok {
		w = lw.w
	}
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) || termWidth(int(f.Fd())) <= 0 {
		return nil, false
	}
	return f, true
}

// startBar shows the bar, in a container made with opts.
func (v *verifyProgress) startBar(opts ...mpb.ContainerOption) {
	v.p = mpb.New(opts...)
	// One byte more than will come, so that the bar does not complete
	// (and stop drawing, lines above it included) before the last entry
	// is counted: wait completes it.
	v.bar = v.p.AddBar(v.totalBytes+1,
		mpb.PrependDecorators(decor.Name("verify", decor.WCSyncSpaceR),
			decor.Any(func(decor.Statistics) string {
				return fmt.Sprintf("%d/%d entries", v.entries.Load(), v.total)
			}, decor.WCSyncSpace)),
		mpb.AppendDecorators(
			decor.CountersKibiByte("% .1f / % .1f", decor.WCSyncSpace),
			decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncSpace),
			decor.AverageETA(decor.ET_STYLE_GO, decor.WCSyncSpace),
		))
}

func (v *verifyProgress) add(n int64) {
	v.bytes.Add(n)
	if v.bar != nil {
		v.bar.IncrInt64(n)
	}
}

func (v *verifyProgress) entryDone() { v.entries.Add(1) }

// println writes a problem line.
func (v *verifyProgress) println(s string) {
	if v.out == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, err := fmt.Fprintln(v.out, s); err != nil && v.out == v.p {
		fmt.Fprintln(v.stdout, s) // the bar has stopped drawing
	}
}

func (v *verifyProgress) tick(every time.Duration) {
	defer close(v.stopped)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-v.stop:
			return
		case <-t.C:
			v.mu.Lock()
			fmt.Fprintf(v.lines, "verified %d of %s, %s of %s\n", v.entries.Load(), entries(v.total),
				bytesize.Format(v.bytes.Load()), bytesize.Format(v.totalBytes))
			v.mu.Unlock()
		}
	}
}

// wait ends the progress: the bar completes, or the lines stop. What
// they wrote to stderr is written out before it returns, so that the
// summary on stdout comes after it on a terminal.
func (v *verifyProgress) wait() {
	close(v.stop)
	<-v.stopped
	if v.bar != nil {
		v.bar.SetTotal(-1, true)
		v.p.Wait()
	}
	if v.flush != nil {
		v.flush()
	}
}
