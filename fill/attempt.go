package fill

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// attempt runs fetch for the bytes from off under a context of its own,
// which a stall cancels: no byte from upstream for the stall timeout,
// waiting for the answer included.
func (f *Fill) attempt(fetch Fetch, off int64) (Body, error) {
	ctx, cancel := context.WithCancelCause(f.ctx)
	timer := time.AfterFunc(f.group.stall, func() { cancel(errStalled) })
	body, err := fetch(ctx, off)
	if err != nil {
		timer.Stop()
		cancel(nil)
		return Body{}, stallCause(ctx, err)
	}
	body.ReadCloser = &watchdog{rc: body.ReadCloser, ctx: ctx, cancel: cancel, timer: timer, stall: f.group.stall}
	return body, nil
}

var errStalled = errors.New("upstream sent nothing for the stall timeout")

// stallCause adds errStalled to err when a stall is why ctx ended.
func stallCause(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errStalled) && !errors.Is(err, errStalled) {
		return fmt.Errorf("%w: %w", errStalled, err)
	}
	return err
}

// watchdog arms the stall timer only while a Read waits for upstream, so
// that time the fill spends waiting for its readers is not a stall.
type watchdog struct {
	rc     io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer
	stall  time.Duration
}

func (w *watchdog) Read(p []byte) (int, error) {
	w.timer.Reset(w.stall)
	n, err := w.rc.Read(p)
	w.timer.Stop()
	if err != nil && err != io.EOF {
		err = stallCause(w.ctx, err)
	}
	return n, err
}

func (w *watchdog) Close() error {
	w.timer.Stop()
	err := w.rc.Close()
	w.cancel(nil)
	return err
}
