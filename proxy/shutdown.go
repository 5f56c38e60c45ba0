package proxy

import (
	"cmp"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// This file holds the proxy's life after New: Serve runs its two servers
// (ServeMirror a third), Shutdown and Close stop them.

// defaultShutdownGrace is the grace of the Shutdown that Serve starts, for
// a zero Config.ShutdownGrace.
const defaultShutdownGrace = 30 * time.Second

// Serve accepts proxy connections on ln until Shutdown or Close is called,
// or until ctx ends, which starts a Shutdown with Config.ShutdownGrace.
// After a shutdown it returns nil, whether or not the grace ran out; after
// a server failed, that error (the other server is then shut down too).
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveErr(p.front.Serve(ln)) })
	g.Go(func() error { return serveErr(p.mitmSrv.Serve(p.mitm)) })
	g.Go(func() error {
		select {
		case <-gctx.Done(): // ctx ended, or a server failed
		case <-p.stopping: // someone else called Shutdown
			return nil
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.grace)
		defer cancel()
		p.Shutdown(sctx) // a grace that ran out is logged, not an error of Serve
		return nil
	})
	return g.Wait()
}

// serveErr drops the error http.Server.Serve returns after a Shutdown.
func serveErr(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the proxy:
//  1. Every server stops accepting. Tunnels, and interceptions still in
//     their TLS handshake, are cut at once: neither carries a response
//     regproxy could let finish, and a client that stays silent must not
//     hold the shutdown up.
//  2. Responses in flight run on until they end or ctx does; idle
//     connections are closed.
//  3. If ctx ends first, every connection left is closed, which cuts its
//     response (clients see a truncated body, never a complete-looking one).
//  4. Fills still running are cancelled: no response reads them any more.
//     Each removes its spool file; one already committing completes.
//  5. It waits for every handler and fill, so that once it returns nothing
//     writes to the cache and the spool directory holds nothing of this
//     process.
//
// It returns ctx's error if responses had to be cut, else nil. Concurrent
// and later calls wait for the first one and return its result.
func (p *Proxy) Shutdown(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(p.abort, cancel) // Close cuts the grace short
	defer stop()
	p.shutdownOnce.Do(func() { p.shutdownErr = p.shutdown(ctx) })
	return p.shutdownErr
}

// Close stops the proxy at once: Shutdown without a grace. A Shutdown in
// progress stops waiting for its responses.
func (p *Proxy) Close() error {
	p.cancelAbort()
	p.Shutdown(p.abort)
	return nil
}

// shutdown runs Shutdown's steps once.
func (p *Proxy) shutdown(ctx context.Context) error {
	close(p.stopping)
	var front, mitm, mirror, fast error
	var drain sync.WaitGroup
	// Each Shutdown closes its listener first: front's stops CONNECTs and
	// cuts the tunnels (RegisterOnShutdown), mitmSrv's (p.mitm) cuts the
	// handshakes of interceptions.
	drain.Go(func() { front = p.front.Shutdown(ctx) })
	drain.Go(func() { mitm = p.mitmSrv.Shutdown(ctx) })
	drain.Go(func() { mirror = p.mirror.srv.Shutdown(ctx) })
	drain.Go(func() { fast = p.fast.shutdown(ctx) })
	drain.Wait()
	p.mitm.Close() // in case mitmSrv never served
	// Besides ctx's end, Server.Shutdown reports only a failed Close of
	// its listener, after which nothing is left to wait for anyway.
	err := cmp.Or(front, mitm, mirror, fast)
	if err != nil {
		p.log.Warn("shutdown grace ended: cutting requests still in flight",
			"requests", p.handlers.running(), "err", err)
		p.front.Close()
		p.mitmSrv.Close()
		p.mirror.srv.Close()
	}
	p.fills.Close()
	p.handlers.wait()
	p.tunnels.close() // already closed by front's Shutdown; waits for them
	p.transport.CloseIdleConnections()
	return err
}

// inflight counts the handlers running on both servers, so that shutdown
// can wait for them: http.Server.Close closes connections but returns
// without waiting for their handlers. The zero value is ready to use.
type inflight struct {
	mu     sync.Mutex // protects n, closed and the Adds of wg
	n      int
	closed bool           // set by wait; later requests are refused
	wg     sync.WaitGroup // one per running handler
}

// track wraps h so that wait waits for it. A request that arrives after
// wait began (its connection was read just before the server closed it)
// gets 503.
func (f *inflight) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !f.enter() {
			http.Error(w, errShuttingDown.Error(), http.StatusServiceUnavailable)
			return
		}
		defer f.leave()
		h.ServeHTTP(w, r)
	})
}

func (f *inflight) enter() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.n++
	f.wg.Add(1)
	return true
}

func (f *inflight) leave() {
	f.mu.Lock()
	f.n--
	f.mu.Unlock()
	f.wg.Done()
}

// running reports how many handlers are running.
func (f *inflight) running() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// wait refuses new requests and waits for the running ones.
func (f *inflight) wait() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.wg.Wait()
}
