// Command regproxy is a caching HTTPS proxy for container registries. See
// the README for how nodes use it.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"
)

// version is stamped by the Makefile (-X main.version=…).
var version = "dev"

// urfave/cli prints "regproxy version X" for --version; the version command
// and --version print the same line, so that scripts may use either.
func init() { cli.VersionPrinter = printVersion }

// printVersion prints "regproxy X" on the app's stdout.
func printVersion(c *cli.Context) {
	fmt.Fprintln(c.App.Writer, c.App.Name, version)
}

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run runs the command line args and returns the exit code: 0, 1 for a
// failure at run time, 2 for bad usage (an unknown flag, a bad value).
func run(args []string, stdout, stderr io.Writer) int {
	// Everything on stderr, the log and the line below alike, goes through
	// one buffer, in order, and is all written before run returns.
	logs := newLogWriter(stderr)
	defer logs.Close()
	app := newApp(stdout, logs)
	err := app.Run(args)
	if err == nil {
		return 0
	}
	fmt.Fprintln(logs, "regproxy:", err)
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:           "regproxy",
		Usage:          "a caching HTTPS proxy for container registries",
		Version:        version,
		Writer:         stdout,
		ErrWriter:      stderr,
		OnUsageError:   usageError,
		ExitErrHandler: func(*cli.Context, error) {}, // run reports errors and exits
		Action:         unknownCommand,
		Commands: []*cli.Command{
			serveCommand(),
			caCommand(),
			cacheCommand(),
			warmCommand(),
			healthcheckCommand(),
			{
				Name:  "version",
				Usage: "print the version (as --version does)",
				Action: func(c *cli.Context) error {
					printVersion(c)
					return nil
				},
			},
		},
	}
}

// usageError turns a flag parsing error into a one-line message with exit
// code 2, instead of urfave/cli's help dump.
func usageError(_ *cli.Context, err error, _ bool) error {
	return cli.Exit(err.Error(), 2)
}

// badFlag reports an invalid flag value: one line naming the flag, exit 2.
func badFlag(name string, err error) error {
	return cli.Exit(fmt.Sprintf("--%s: %v", name, err), 2)
}

// unknownCommand is the action of commands that only group others, the app
// included. Without it urfave/cli answers a mistyped command with exit code
// 3, outside run's contract.
func unknownCommand(c *cli.Context) error {
	if c.Args().Present() {
		return cli.Exit(fmt.Sprintf("unknown command %q", c.Args().First()), 2)
	}
	return cli.ShowSubcommandHelp(c)
}
