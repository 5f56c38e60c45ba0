package main

import (
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/proxy"
)

// parseServe runs serveConfig on a serve command line, without serving.
// Like runCLI, it must not run in parallel with another urfave/cli run.
func parseServe(t *testing.T, args ...string) (proxy.Config, error) {
	t.Helper()
	var cfg proxy.Config
	var err error
	app := &cli.App{Name: "regproxy", Writer: io.Discard, ErrWriter: io.Discard,
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{{Name: "serve", Flags: serveFlags(), Action: func(c *cli.Context) error {
			cfg, err = serveConfig(c)
			return nil
		}}}}
	if runErr := app.Run(append([]string{"regproxy", "serve"}, args...)); runErr != nil {
		t.Fatalf("serve %q: %v", args, runErr)
	}
	return cfg, err
}

// tunnelFields are the Config fields the tunnel flags set.
type tunnelFields struct {
	Deny  bool
	Allow []string
	Idle  time.Duration
	Max   int
}

func tunnelFieldsOf(cfg proxy.Config) tunnelFields {
	return tunnelFields{cfg.TunnelDeny, cfg.TunnelAllow, cfg.TunnelIdleTimeout, cfg.TunnelMaxPerClient}
}

// TestTunnelFlags checks how the tunnel flags and their environment
// variables reach proxy.Config. t.Setenv forbids t.Parallel.
func TestTunnelFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want tunnelFields
	}{
		{"defaults", nil, nil, tunnelFields{false, nil, 5 * time.Minute, 64}},
		{"deny with a list, repeated",
			nil, []string{"--tunnel", "deny", "--tunnel-allow", "git.example.com, ssh.example.com:22", "--tunnel-allow", "x.test"},
			tunnelFields{true, []string{"git.example.com", "ssh.example.com:22", "x.test"}, 5 * time.Minute, 64}},
		{"deny with nothing allowed", nil, []string{"--tunnel", "deny"}, tunnelFields{true, nil, 5 * time.Minute, 64}},
		{"idle timeout and cap", nil, []string{"--tunnel-idle-timeout", "1d", "--tunnel-max-per-client", "8"},
			tunnelFields{false, nil, 24 * time.Hour, 8}},
		{"from the environment",
			map[string]string{"REGPROXY_TUNNEL": "deny", "REGPROXY_TUNNEL_ALLOW": "a.test b.test:8443", "REGPROXY_TUNNEL_IDLE_TIMEOUT": "90s", "REGPROXY_TUNNEL_MAX_PER_CLIENT": "3"},
			nil, tunnelFields{true, []string{"a.test", "b.test:8443"}, 90 * time.Second, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg, err := parseServe(t, tc.args...)
			if err != nil {
				t.Fatalf("serveConfig: %v", err)
			}
			if got := tunnelFieldsOf(cfg); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestBadTunnelFlags: each bad value is one line naming its flag, exit 2.
func TestBadTunnelFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		flag string
	}{
		{"tunnel neither allow nor deny", []string{"--tunnel", "maybe"}, "--tunnel:"},
		{"tunnel-allow bad host", []string{"--tunnel", "deny", "--tunnel-allow", "ok.test bad_host!"}, "tunnel-allow"},
		{"tunnel-allow port out of range", []string{"--tunnel", "deny", "--tunnel-allow", "ok.test:70000"}, "tunnel-allow"},
		{"tunnel-allow without deny", []string{"--tunnel-allow", "ok.test"}, "tunnel-allow"},
		{"tunnel-idle-timeout not a duration", []string{"--tunnel-idle-timeout", "soon"}, "tunnel-idle-timeout"},
		{"tunnel-idle-timeout zero", []string{"--tunnel-idle-timeout", "0s"}, "tunnel-idle-timeout"},
		{"tunnel-max-per-client zero", []string{"--tunnel-max-per-client", "0"}, "tunnel-max-per-client"},
		{"tunnel-max-per-client not a number", []string{"--tunnel-max-per-client", "lots"}, "tunnel-max-per-client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, serveArgs(t, tc.args...)...)
			wantUsageError(t, tc.flag, code, stdout, stderr)
		})
	}
}

// TestBadTunnelFlagFromEnv: a bad value from REGPROXY_TUNNEL is reported
// by its flag name. t.Setenv forbids t.Parallel.
func TestBadTunnelFlagFromEnv(t *testing.T) {
	t.Setenv("REGPROXY_TUNNEL", "open")
	code, stdout, stderr := runCLI(t, serveArgs(t)...)
	wantUsageError(t, "--tunnel:", code, stdout, stderr)
}
