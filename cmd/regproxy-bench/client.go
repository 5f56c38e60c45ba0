package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"time"
)

// Client limits. Every request the bench makes is bounded by its scenario's
// context as well.
const (
	handshakeTimeout = 10 * time.Second
	headerTimeout    = 60 * time.Second
	readBufSize      = 256 << 10
)

// newTransport is the one client configuration of the bench: HTTP/1.1 over
// TLS with only roots trusted, no compression, keep-alive. Proxied and
// direct clients differ only in how they reach the server.
func newTransport(roots *x509.CertPool) *http.Transport {
	return &http.Transport{
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     false,
		DisableCompression:    true,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   handshakeTimeout,
		ResponseHeaderTimeout: headerTimeout,
	}
}

// proxiedClient reaches upstreamHost through regproxy at proxyAddr, trusting
// only regproxy's CA, as a node does.
func proxiedClient(proxyAddr string, roots *x509.CertPool) *http.Client {
	t := newTransport(roots)
	t.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: proxyAddr})
	return &http.Client{Transport: t}
}

// directClient dials addr for every host name, trusting only roots: a node
// talking to the server with no proxy in between.
func directClient(addr string, roots *x509.CertPool) *http.Client {
	t := newTransport(roots)
	var d net.Dialer
	t.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}
	return &http.Client{Transport: t}
}

// pullResult is what one GET of a blob took.
type pullResult struct {
	conn  time.Duration // from the start of the request to a connection (CONNECT and TLS included)
	ttfb  time.Duration // from the start of the request to the first body byte
	total time.Duration // from the start of the request to the end of the body
	// lastByte is how long the final byte came after all the others.
	// regproxy holds back the last byte of a fill until the blob is verified
	// and committed, so for a cold pull this is the cost of that step.
	lastByte time.Duration
	bytes    int64
}

// pull GETs url and reads the body to the end, checking that it has want
// bytes and, when verify is not empty, that it hashes to that digest.
func pull(ctx context.Context, c *http.Client, url string, want int64, verify string) (pullResult, error) {
	start := time.Now()
	var conn time.Duration
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { conn = time.Since(start) },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return pullResult{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return pullResult{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return pullResult{}, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	var h hash.Hash
	if verify != "" {
		h = sha256.New()
	}
	res, err := drain(resp.Body, start, h, want)
	res.conn = conn
	if err != nil {
		return res, fmt.Errorf("GET %s: after %d bytes: %w", url, res.bytes, err)
	}
	if res.bytes != want {
		return res, fmt.Errorf("GET %s: got %d bytes, want %d", url, res.bytes, want)
	}
	if h != nil && "sha256:"+hex.EncodeToString(h.Sum(nil)) != verify {
		return res, fmt.Errorf("GET %s: body does not match its digest", url)
	}
	return res, nil
}

// drain reads body to EOF, noting when the first byte came and how long
// the last of want bytes took after the others.
func drain(body io.Reader, start time.Time, h hash.Hash, want int64) (pullResult, error) {
	var res pullResult
	var allButLast time.Time
	buf := make([]byte, readBufSize)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if res.bytes == 0 {
				res.ttfb = time.Since(start)
			}
			res.bytes += int64(n)
			if res.bytes == want-1 {
				allButLast = time.Now()
			}
			if h != nil {
				h.Write(buf[:n])
			}
		}
		if err == io.EOF {
			res.total = time.Since(start)
			if !allButLast.IsZero() {
				res.lastByte = time.Since(allButLast)
			}
			return res, nil
		}
		if err != nil {
			return res, err
		}
	}
}

// get GETs url with header (nil: none), reads and discards the body, and
// returns how long that took.
func get(ctx context.Context, c *http.Client, url string, header http.Header) (time.Duration, error) {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	if header != nil {
		req.Header = header
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return time.Since(start), err
}
