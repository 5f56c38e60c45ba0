package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"

	"github.com/urfave/cli/v2"
)

// The healthcheck command is the container image's HEALTHCHECK: a
// distroless image has no shell, curl or wget, so the binary asks its own
// /healthz. Exit 0 when it answers 200 within --timeout, 1 otherwise with
// one line on stderr (Docker keeps it as the check's output), 2 for a bad
// flag.
func healthcheckCommand() *cli.Command {
	return &cli.Command{
		Name:  "healthcheck",
		Usage: "exit 0 if regproxy's /healthz answers 200, 1 if not (the container image's HEALTHCHECK)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "url", EnvVars: env("healthcheck-url"),
				Usage: "the URL to GET (default: /healthz on loopback at the port of --listen)"},
			// The same variable as serve's --listen: a container that moves
			// the port with REGPROXY_LISTEN moves its health check with it.
			&cli.StringFlag{Name: "listen", Value: ":3128", EnvVars: env("listen"),
				Usage: "serve's --listen, whose port the default --url names"},
			&cli.StringFlag{Name: "timeout", Value: "5s", EnvVars: env("healthcheck-timeout"),
				Usage: "give up after this long"},
		},
		OnUsageError: usageError,
		Action:       healthcheck,
	}
}

func healthcheck(c *cli.Context) error {
	if c.Args().Present() {
		return cli.Exit(fmt.Sprintf("unexpected argument %q: healthcheck takes only flags", c.Args().First()), 2)
	}
	timeout, err := parseDuration(c.String("timeout"))
	if err != nil {
		return badFlag("timeout", err)
	}
	target, err := healthURL(c.String("url"), c.String("listen"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, timeout)
	defer cancel()
	if err := getHealthz(ctx, target); err != nil {
		return cli.Exit(fmt.Sprintf("healthcheck: %v", err), 1)
	}
	return nil
}

// healthURL is --url, checked, or /healthz on the port of listen: on its
// host if it names one, else on loopback (serve listens on every address).
func healthURL(raw, listen string) (string, error) {
	if raw != "" {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", badFlag("url", fmt.Errorf("%q: want http://HOST[:PORT]/PATH", raw))
		}
		return raw, nil
	}
	if err := checkListen(listen); err != nil {
		return "", badFlag("listen", err)
	}
	host, port, _ := net.SplitHostPort(listen)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", nil
}

// healthClient asks regproxy directly: a proxy of the environment (a
// container's HTTP_PROXY) would answer for regproxy, and a redirect would
// make another server's page count as regproxy's health. It keeps no
// connection: HEALTHCHECK runs a new process each time.
var healthClient = &http.Client{
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// getHealthz GETs target and wants a 200, body and all, before ctx ends.
func getHealthz(ctx context.Context, target string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	resp, err := healthClient.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("GET %s: no answer within the timeout", target)
		}
		return err // *url.Error names the method and the URL
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)); err != nil {
		return fmt.Errorf("GET %s: reading the body: %w", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s, want 200 OK", target, resp.Status)
	}
	return nil
}
