package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/ca"
	"github.com/regproxy/regproxy/proxy"
)

// reinitHint is what an admin must do when DATA_DIR/ca does not fit
// --ca-name-constraints. regproxy never replaces a CA by itself: nodes may
// trust it, and they must be told to trust the new one.
const reinitHint = "run `regproxy ca init --name-constraints --force` with the same --data-dir and --registries, restart regproxy, and make every node trust the new CA"

func caCommand() *cli.Command {
	return &cli.Command{
		Name:   "ca",
		Usage:  "create or inspect the CA",
		Action: unknownCommand,
		Subcommands: []*cli.Command{{
			Name:         "print",
			Usage:        "print the CA certificate in PEM (generating the CA on first use, as serve would)",
			Flags:        append([]cli.Flag{dataDirFlag(), registriesFlag()}, caFlags()...),
			OnUsageError: usageError,
			Action:       caPrint,
		}, {
			Name:  "init",
			Usage: "generate a new CA in DATA_DIR/ca",
			Flags: []cli.Flag{
				dataDirFlag(),
				registriesFlag(),
				&cli.BoolFlag{Name: "name-constraints", EnvVars: env("ca-name-constraints"),
					Usage: "limit the CA to the --registries hosts (X.509 name constraints)"},
				&cli.BoolFlag{Name: "force", Usage: "replace an existing CA (every node must then trust the new one)"},
			},
			OnUsageError: usageError,
			Action:       caInit,
		}},
	}
}

func caPrint(c *cli.Context) error {
	registries, err := parseRegistries(c.String("registries"))
	if err != nil {
		return err
	}
	authority, err := loadCA(c, registries, stderrLogger(c))
	if err != nil {
		return err
	}
	_, err = c.App.Writer.Write(authority.CertPEM())
	return err
}

// caInit generates DATA_DIR/ca on request, refusing to replace a CA that
// nodes may already trust unless told to.
func caInit(c *cli.Context) error {
	if c.Args().Present() {
		return cli.Exit(fmt.Sprintf("unexpected argument %q: ca init takes only flags; quote lists (--registries \"a b\")", c.Args().First()), 2)
	}
	registries, err := parseRegistries(c.String("registries"))
	if err != nil {
		return err
	}
	var permit []string
	if c.Bool("name-constraints") {
		permit = proxy.RegistryHosts(registries)
	}
	dir := filepath.Join(c.String("data-dir"), "ca")
	existed, err := ca.Exists(dir)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	if existed && !c.Bool("force") {
		return cli.Exit(fmt.Sprintf("%s already holds a CA; --force replaces it, and every node must then trust the new one", dir), 1)
	}
	authority, err := ca.Generate(dir, permit, ca.Options{})
	if err != nil {
		return cli.Exit(fmt.Sprintf("CA in %s: %v", c.String("data-dir"), err), 1)
	}
	warnModes(stderrLogger(c), dir)
	reportInit(c, dir, authority, existed)
	return nil
}

// reportInit tells the admin what ca init made and what to do next.
func reportInit(c *cli.Context, dir string, authority *ca.CA, replaced bool) {
	w := c.App.Writer
	fmt.Fprintf(w, "wrote %s ca_sha256=%s\n", dir, fingerprint(authority))
	if names := authority.PermittedNames(); len(names) > 0 {
		fmt.Fprintf(w, "name constraints: %s\n", strings.Join(names, " "))
	}
	if replaced {
		fmt.Fprintln(w, "replaced the old CA: restart regproxy, then make every node trust the new one:")
		fmt.Fprintf(w, "  scripts/setup-node.sh --ca-sha256 %s PROXY\n", fingerprint(authority))
	}
}

// parseRegistries reads --registries the way serve does.
func parseRegistries(s string) ([]string, error) {
	registries := splitList(s)
	if len(registries) == 0 {
		return nil, badFlag("registries", fmt.Errorf("empty list"))
	}
	if err := proxy.CheckRegistries(registries); err != nil {
		return nil, badFlag("registries", err)
	}
	return registries, nil
}

// loadCA loads the CA that serve uses: the supplied one as it is, or the one
// in DATA_DIR/ca, generated on first start (name-constrained to registries
// under --ca-name-constraints). It warns of a key others may read and of
// registries that the CA's name constraints leave out.
func loadCA(c *cli.Context, registries []string, log *slog.Logger) (*ca.CA, error) {
	hosts := proxy.RegistryHosts(registries)
	cert, key := c.String("ca-cert"), c.String("ca-key")
	if (cert == "") != (key == "") {
		return nil, badFlag("ca-cert", fmt.Errorf("--ca-cert and --ca-key go together"))
	}
	if cert != "" {
		authority, err := ca.LoadFiles(cert, key, ca.Options{})
		if err != nil {
			return nil, badFlag("ca-cert", err)
		}
		if c.Bool("ca-name-constraints") && !authority.Constrained() {
			log.Warn("--ca-name-constraints applies only to the CA in DATA_DIR/ca; the supplied CA has no name constraints", "ca_cert", cert)
		}
		warnUncovered(log, authority, hosts)
		return authority, nil
	}
	dir := filepath.Join(c.String("data-dir"), "ca")
	warnModes(log, dir)
	if c.Bool("ca-name-constraints") {
		return loadConstrained(dir, hosts, log)
	}
	authority, err := ca.LoadOrCreate(dir, ca.Options{})
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("CA in %s: %v", c.String("data-dir"), err), 1)
	}
	warnUncovered(log, authority, hosts)
	return authority, nil
}

// loadConstrained loads DATA_DIR/ca under --ca-name-constraints. The first
// start generates a CA constrained to hosts; a CA already there must be
// constrained and cover every host, or serve stops with what to do.
func loadConstrained(dir string, hosts []string, log *slog.Logger) (*ca.CA, error) {
	exists, err := ca.Exists(dir)
	if err != nil {
		return nil, cli.Exit(err.Error(), 1)
	}
	if !exists {
		authority, err := ca.Generate(dir, hosts, ca.Options{})
		if err != nil {
			return nil, cli.Exit(fmt.Sprintf("CA in %s: %v", dir, err), 1)
		}
		log.Info("generated a name-constrained CA", "dir", dir, "permitted", authority.PermittedNames())
		return authority, nil
	}
	authority, err := ca.LoadOrCreate(dir, ca.Options{})
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("CA in %s: %v", dir, err), 1)
	}
	if !authority.Constrained() {
		return nil, cli.Exit(fmt.Sprintf("--ca-name-constraints: the CA in %s has no name constraints; %s", dir, reinitHint), 1)
	}
	if missing := uncovered(authority, hosts); len(missing) > 0 {
		return nil, cli.Exit(fmt.Sprintf("--ca-name-constraints: the name constraints of the CA in %s do not cover %s; %s",
			dir, strings.Join(missing, " "), reinitHint), 1)
	}
	return authority, nil
}

// uncovered returns the hosts, sorted, that clients would refuse leaves of
// authority for.
func uncovered(authority *ca.CA, hosts []string) []string {
	var missing []string
	for _, h := range hosts {
		if !authority.Permits(h) {
			missing = append(missing, h)
		}
	}
	slices.Sort(missing)
	return missing
}

// warnUncovered logs the registry hosts whose leaves clients would refuse:
// regproxy still intercepts them, so their pulls would fail.
func warnUncovered(log *slog.Logger, authority *ca.CA, hosts []string) {
	if missing := uncovered(authority, hosts); len(missing) > 0 {
		log.Warn("the CA's name constraints do not cover these registries; clients will refuse regproxy's certificates for them",
			"hosts", missing, "permitted", authority.PermittedNames())
	}
}

// warnModes logs each file of DATA_DIR/ca whose mode lets other users near
// the key. It only warns: the admin may have reasons, and refusing to start
// would take down every node's pulls.
func warnModes(log *slog.Logger, dir string) {
	for _, w := range ca.CheckModes(dir) {
		log.Warn("CA file is open to other users", "file", w.Path,
			"mode", fmt.Sprintf("%04o", w.Mode), "want", fmt.Sprintf("%04o", w.Want))
	}
}

// stderrLogger logs the warnings of the ca commands, which take no log
// flags.
func stderrLogger(c *cli.Context) *slog.Logger {
	return slog.New(slog.NewTextHandler(c.App.ErrWriter, nil))
}

// fingerprint is the SHA-256 of the CA certificate, for admins to compare
// with what their nodes trust.
func fingerprint(authority *ca.CA) string {
	sum := sha256.Sum256(authority.Certificate().Raw)
	return hex.EncodeToString(sum[:])
}
