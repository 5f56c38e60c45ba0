package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
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
			Usage:        "print the CA certificate in PEM that serve uses (never generating one: see ca init), and its ca_sha256 on stderr",
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

// caPrint prints the CA that serve would use, and its fingerprint on
// stderr as serve logs it and the setup scripts' --ca-sha256 takes it
// (ca_sha256=HEX), so that stdout stays the PEM file. Unlike serve it
// never generates a CA: one printed from the wrong --data-dir would be a
// CA no regproxy serves, and nodes told to trust it would fail every pull.
func caPrint(c *cli.Context) error {
	if c.Args().Present() {
		return cli.Exit(fmt.Sprintf("unexpected argument %q: ca print takes only flags; quote lists (--registries \"a b\")", c.Args().First()), 2)
	}
	registries, err := parseRegistries(c.String("registries"))
	if err != nil {
		return err
	}
	if c.String("ca-cert") == "" && c.String("ca-key") == "" {
		if err := needCA(c.String("data-dir")); err != nil {
			return err
		}
	}
	authority, err := loadCA(c, registries, stderrLogger(c))
	if err != nil {
		return err
	}
	if _, err := c.App.Writer.Write(authority.CertPEM()); err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.App.ErrWriter, "ca_sha256=%s\n", fingerprint(authority))
	return err
}

// needCA fails, with what to do, unless DATA_DIR/ca holds a CA.
func needCA(dataDir string) error {
	dir := filepath.Join(dataDir, "ca")
	exists, err := ca.Exists(dir)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	if !exists {
		return cli.Exit(fmt.Sprintf("no CA in %s: give the --data-dir that regproxy serve uses, or create one with `regproxy ca init --data-dir %s`", dir, dataDir), 1)
	}
	return nil
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

// reportInit tells the admin what ca init made and what to do next: the
// one-liner that sets up a node, with the new CA's fingerprint.
func reportInit(c *cli.Context, dir string, authority *ca.CA, replaced bool) {
	w := c.App.Writer
	fp := fingerprint(authority)
	fmt.Fprintf(w, "wrote %s ca_sha256=%s\n", dir, fp)
	if names := authority.PermittedNames(); len(names) > 0 {
		fmt.Fprintf(w, "name constraints: %s\n", strings.Join(names, " "))
	}
	if replaced {
		fmt.Fprintln(w, "replaced the old CA: restart regproxy, then make every node trust the new one; on each node, as root:")
	} else {
		fmt.Fprintln(w, "start regproxy serve with this --data-dir, then on each node, as root:")
	}
	fmt.Fprintf(w, "  %s\n", proxy.SetupCommand("PROXY:3128", "docker", fp))
	fmt.Fprintln(w, "(containerd, podman or enroot in place of docker; --help for each script's options)")
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

// caRollback takes back a CA that serve generated in DATA_DIR/ca if serve
// then fails to start. Such a CA was never served nor logged, so no node
// trusts it, and leaving it would turn the next start's flags into a
// surprise: a later --ca-name-constraints refuses the unconstrained CA
// that a failed start left behind. serve binds its port before the CA, so
// the usual failure (a port in use) never gets this far.
type caRollback struct {
	dir    string // DATA_DIR/ca if it held no CA before this start; "" if there is nothing to take back
	hadDir bool   // dir existed (empty of a CA) before: keep it
}

// loadServeCA loads serve's CA into cfg.CA, as loadCA does. undo takes
// back the CA if this call generated it, for a start that fails after.
func loadServeCA(c *cli.Context, cfg *proxy.Config) (undo func(), err error) {
	rollback, err := prepareRollback(c)
	if err != nil {
		return nil, cli.Exit(err.Error(), 1)
	}
	authority, err := loadCA(c, cfg.Registries, cfg.Logger)
	if err != nil {
		return nil, err
	}
	cfg.CA = authority
	return func() { rollback.undo(authority, cfg.Logger) }, nil
}

// prepareRollback looks at DATA_DIR/ca before serve loads the CA.
func prepareRollback(c *cli.Context) (caRollback, error) {
	if c.String("ca-cert") != "" {
		return caRollback{}, nil // a supplied CA is never generated
	}
	dir := filepath.Join(c.String("data-dir"), "ca")
	exists, err := ca.Exists(dir)
	if err != nil || exists {
		return caRollback{}, err // loadCA reports the error
	}
	_, statErr := os.Stat(dir)
	return caRollback{dir: dir, hadDir: statErr == nil}, nil
}

// undo removes the CA that this start generated, if the files still hold
// it: the certificate first, since it marks a complete pair. Only a
// failure to remove it is logged.
func (r caRollback) undo(authority *ca.CA, log *slog.Logger) {
	if r.dir == "" {
		return
	}
	certFile := filepath.Join(r.dir, "ca.crt")
	if pem, err := os.ReadFile(certFile); err != nil || !bytes.Equal(pem, authority.CertPEM()) {
		return // not ours any more, or gone
	}
	err := errors.Join(os.Remove(certFile), os.Remove(filepath.Join(r.dir, "ca.key")))
	if err == nil && !r.hadDir {
		err = os.Remove(r.dir)
	}
	if err != nil {
		log.Warn("could not remove the CA generated by this failed start", "dir", r.dir, "err", err)
	}
	// Silent otherwise: the start's error stays the one line it reports.
}
