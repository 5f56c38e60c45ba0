package main

import (
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// The container image cannot be built here (its base images are in a
// registry the tests cannot reach), so these tests check the two things
// it is made of: the Dockerfile, read as Docker reads it, and the binary
// of make build, which the Dockerfile runs, run as the image runs it.

// dockerfile is the repository's Dockerfile, from this package.
const dockerfile = "../../Dockerfile"

// imageUID is the user the image runs as: distroless's nonroot.
const imageUID = 65532

// dockerStage is one FROM of a Dockerfile and the instructions under it.
type dockerStage struct {
	From, Name string // the base image, and the name after AS
	Instrs     []dockerInstr
}

// dockerInstr is one instruction: "RUN", and the rest of its line.
type dockerInstr struct {
	Cmd, Args string
}

// parseDockerfile reads file into stages: comments and blank lines
// dropped, continued lines (a trailing \) joined.
func parseDockerfile(t *testing.T, file string) []dockerStage {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var stages []dockerStage
	var line string
	for raw := range strings.Lines(string(b)) {
		raw = strings.TrimSpace(raw)
		if raw == "" || strings.HasPrefix(raw, "#") {
			continue
		}
		if cont, ok := strings.CutSuffix(raw, `\`); ok {
			line += cont + " "
			continue
		}
		line += raw
		cmd, args, _ := strings.Cut(line, " ")
		line = ""
		in := dockerInstr{Cmd: strings.ToUpper(cmd), Args: strings.Join(strings.Fields(args), " ")}
		if in.Cmd == "FROM" {
			f := strings.Fields(in.Args)
			st := dockerStage{From: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.Name = f[2]
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			t.Fatalf("%s: %s before the first FROM", file, in.Cmd)
		}
		stages[len(stages)-1].Instrs = append(stages[len(stages)-1].Instrs, in)
	}
	return stages
}

// find returns the arguments of every cmd instruction of the stage.
func (s dockerStage) find(cmd string) []string {
	var out []string
	for _, in := range s.Instrs {
		if in.Cmd == cmd {
			out = append(out, in.Args)
		}
	}
	return out
}

// execForm parses an exec-form argument list (["/regproxy", "serve"]).
func execForm(t *testing.T, what, s string) []string {
	t.Helper()
	var argv []string
	if err := json.Unmarshal([]byte(s), &argv); err != nil || len(argv) == 0 {
		t.Fatalf("%s %s: want the exec form, a JSON array (no shell in distroless): %v", what, s, err)
	}
	return argv
}

// healthcheckArgv is the command of the Dockerfile's HEALTHCHECK, its
// options checked: the check must give up before Docker kills it.
func healthcheckArgv(t *testing.T, final dockerStage) []string {
	t.Helper()
	hc := final.find("HEALTHCHECK")
	if len(hc) != 1 {
		t.Fatalf("final stage: %d HEALTHCHECKs, want 1", len(hc))
	}
	opts, cmd, ok := strings.Cut(hc[0], "CMD ")
	if !ok {
		t.Fatalf("HEALTHCHECK %s: no CMD", hc[0])
	}
	argv := execForm(t, "HEALTHCHECK CMD", cmd)
	if len(argv) < 2 || argv[0] != "/regproxy" || argv[1] != "healthcheck" {
		t.Fatalf("HEALTHCHECK runs %q, want /regproxy healthcheck", argv)
	}
	dockerTimeout := 30 * time.Second // Docker's default
	for _, o := range strings.Fields(opts) {
		if v, ok := strings.CutPrefix(o, "--timeout="); ok {
			dockerTimeout, _ = time.ParseDuration(v)
		}
	}
	own := 5 * time.Second // healthcheck's default
	if i := slices.Index(argv, "--timeout"); i > 0 && i+1 < len(argv) {
		own, _ = time.ParseDuration(argv[i+1])
	}
	if own <= 0 || own >= dockerTimeout {
		t.Errorf("healthcheck --timeout %v, want less than HEALTHCHECK --timeout %v", own, dockerTimeout)
	}
	return argv
}

// TestDockerfile checks the image's shape: a Go build stage that runs make
// build (whose recipe is static and trimmed), and a distroless final stage
// that holds only the binary and the data directory, runs as a numeric
// non-root user, and declares the volume, the port, a health check that
// needs no shell, and serve on the volume.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	stages := parseDockerfile(t, dockerfile)
	if len(stages) != 2 {
		t.Fatalf("%d stages, want 2 (build, final)", len(stages))
	}
	build, final := stages[0], stages[1]
	if !strings.HasPrefix(build.From, "golang:") || build.Name == "" {
		t.Errorf("build stage FROM %s AS %q, want golang:… AS a name", build.From, build.Name)
	}
	if !slices.ContainsFunc(build.find("RUN"), func(r string) bool {
		return strings.Contains(r, "make build ") && strings.Contains(r, "BIN=/out/regproxy")
	}) {
		t.Errorf("build stage RUNs %q, want make build BIN=/out/regproxy", build.find("RUN"))
	}
	checkBuildRecipe(t)
	if !strings.HasPrefix(final.From, "gcr.io/distroless/static") && final.From != "scratch" {
		t.Errorf("final stage FROM %s, want distroless static (no libc) or scratch", final.From)
	}
	checkFinalStage(t, final, build.Name)
}

// checkBuildRecipe checks that make build, which the image runs, builds
// without cgo and with -trimpath.
func checkBuildRecipe(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	_, recipe, ok := strings.Cut(string(b), "\nbuild:\n")
	recipe, _, _ = strings.Cut(recipe, "\n\n")
	if !ok || !strings.Contains(recipe, "CGO_ENABLED=0 go build -trimpath ") || !strings.Contains(recipe, "-o $(BIN) ./cmd/regproxy") {
		t.Errorf("Makefile build recipe %q, want CGO_ENABLED=0 go build -trimpath … -o $(BIN) ./cmd/regproxy", recipe)
	}
}

// checkFinalStage checks the final stage of the Dockerfile.
func checkFinalStage(t *testing.T, final dockerStage, buildName string) {
	t.Helper()
	copies := final.find("COPY")
	if !slices.Contains(copies, "--from="+buildName+" /out/regproxy /regproxy") {
		t.Errorf("final stage COPYs %q, want the binary from %s at /regproxy", copies, buildName)
	}
	uid := strconv.Itoa(imageUID)
	if !slices.Contains(copies, "--from="+buildName+" --chown="+uid+":"+uid+" /out/data /var/lib/regproxy") {
		t.Errorf("final stage COPYs %q, want /var/lib/regproxy owned by %s, so that a new volume is writable", copies, uid)
	}
	if users := final.find("USER"); len(users) != 1 || users[0] != uid+":"+uid {
		t.Errorf("USER %q, want %s:%s: numeric (runAsNonRoot can check it) and not root", users, uid, uid)
	}
	if v := final.find("VOLUME"); !slices.Equal(v, []string{"/var/lib/regproxy"}) {
		t.Errorf("VOLUME %q, want /var/lib/regproxy", v)
	}
	if p := final.find("EXPOSE"); !slices.Equal(p, []string{"3128"}) {
		t.Errorf("EXPOSE %q, want 3128", p)
	}
	healthcheckArgv(t, final)
	ep := final.find("ENTRYPOINT")
	if len(ep) != 1 {
		t.Fatalf("ENTRYPOINT %q, want one", ep)
	}
	argv := execForm(t, "ENTRYPOINT", ep[0])
	if want := []string{"/regproxy", "serve", "--data-dir", "/var/lib/regproxy"}; !slices.Equal(argv, want) {
		t.Errorf("ENTRYPOINT %q, want %q: serve on the volume", argv, want)
	}
	for _, in := range final.Instrs {
		if in.Cmd == "RUN" {
			t.Errorf("final stage RUN %s: distroless has no shell", in.Args)
		}
	}
}

// TestImageBinary builds the binary the image holds (make build, as the
// Dockerfile runs it), checks that it is static, and runs it as the image
// does: as user 65532, on a read-only root filesystem where only the data
// volume is writable. It must start, generate its CA, pull an image
// through its cache, and answer the image's HEALTHCHECK command: exit 0
// while it serves, 1 with one line on stderr where nothing listens.
// Needs root (unshare, mount, setpriv), as make test is.
func TestImageBinary(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("TestImageBinary runs regproxy as the image does (another user, a read-only root): run it as root, as make test does")
	}
	dir := imageDir(t)
	static := filepath.Join(dir, "regproxy")
	makeBuild(t, static)
	checkStatic(t, static)
	for _, arg := range []string{"version", "--version"} {
		if out, err := exec.Command(static, arg).CombinedOutput(); err != nil || string(out) != "regproxy image-test\n" {
			t.Errorf("regproxy %s = %q, %v; want %q", arg, out, err, "regproxy image-test\n")
		}
	}

	s := imageHubSetup(t, static, dir)
	if n := cranePullAll(t, s); n == 0 || s.up.Count("GET blob") != int64(n) {
		t.Errorf("pulled %d blobs, %d fetched upstream; want each once", n, s.up.Count("GET blob"))
	}
	checkDataOwner(t, filepath.Join(dir, "data"))

	argv := healthcheckArgv(t, parseDockerfile(t, dockerfile)[1])
	// REGPROXY_LISTEN is how a container moves serve's port; the health
	// check follows it.
	if out, err := runHealthcheck(t, static, argv, s.d.addr); err != nil || out != "" {
		t.Errorf("HEALTHCHECK against regproxy: %v, output %q; want exit 0 and no output", err, out)
	}
	out, err := runHealthcheck(t, static, argv, deadAddr(t))
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || strings.Count(out, "\n") != 1 || !strings.Contains(out, "connection refused") {
		t.Errorf("HEALTHCHECK where nothing listens: %v, output %q; want exit 1 and one line", err, out)
	}
}

// imageDir is a directory the image's user can enter, removed at the end.
func imageDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "regproxy-image-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// makeBuild runs make build into out, as the Dockerfile does.
func makeBuild(t *testing.T, out string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "--no-print-directory", "-C", "../..", "build", "BIN="+out, "VERSION=image-test")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, b)
	}
}

// checkStatic checks that file needs no dynamic loader nor libc, so that
// it runs on distroless static or scratch, and was built as make build
// says: cgo off, paths trimmed, symbols stripped.
func checkStatic(t *testing.T, file string) {
	t.Helper()
	f, err := elf.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has a %v program header: dynamically linked", file, p.Type)
		}
	}
	if s := f.Section(".dynamic"); s != nil {
		t.Errorf("%s has a .dynamic section", file)
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs %q", file, libs)
	}
	bi, err := buildinfo.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("%s built with CGO_ENABLED=%q -trimpath=%q; want 0 and true", file, settings["CGO_ENABLED"], settings["-trimpath"])
	}
	// Go leaves -ldflags out of the build info under -trimpath: look for
	// what -s and -w strip instead.
	if _, err := f.Symbols(); !errors.Is(err, elf.ErrNoSymbols) {
		t.Errorf("%s has a symbol table (%v): built without -ldflags -s", file, err)
	}
	if s := f.Section(".debug_info"); s != nil {
		t.Errorf("%s has DWARF: built without -ldflags -w", file)
	}
}

// imageHubSetup is newHubSetup with the static binary run as the image
// runs it (see startAsImage).
func imageHubSetup(t *testing.T, static, dir string) *hubSetup {
	t.Helper()
	up := testupstream.Start(t, testupstream.WithHub())
	s := &hubSetup{up: up}
	s.Image = pushImage(t, up, "public/app", "v1")
	idx := up.MultiArchIndex(t)
	up.PushIndex(t, "public/multi", "v1", idx)
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	s.Index = hubImage{Repo: "public/multi", Tag: "v1", Digest: d.String()}
	// The upstream's CA, where the image's user can read it.
	upstreamCA := filepath.Join(dir, "upstream-ca.crt")
	pem, err := os.ReadFile(up.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(upstreamCA, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--registries", "registry.test auth.test cdn.test", "--upstream-ca", upstreamCA}
	for _, r := range up.Resolves() {
		args = append(args, "--resolve", r)
	}
	s.d = startAsImage(t, static, filepath.Join(dir, "data"), args...)
	s.caFile = s.fetchCA(t)
	up.ResetCounts()
	return s
}

// startAsImage runs static serve as the image runs it: as user 65532, in a
// mount namespace whose root filesystem is read-only but for the data
// directory (a volume in the image), which is the only place it may
// write. The process keeps its pid through each exec, so stop signals
// regproxy itself.
func startAsImage(t *testing.T, static, data string, args ...string) *daemon {
	t.Helper()
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(data, imageUID, imageUID); err != nil {
		t.Fatal(err)
	}
	const script = `mount --bind "$1" "$1" && mount -o remount,bind,ro / && shift && exec setpriv --reuid=65532 --regid=65532 --clear-groups -- "$@"`
	argv := append([]string{"--mount", "--propagation", "private", "sh", "-c", script, "sh", data,
		static, "serve", "--listen", "127.0.0.1:0", "--data-dir", data, "--log-format", "json"}, args...)
	cmd := exec.Command("unshare", argv...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=/home/nonroot", // distroless's; it does not exist here, nor need to
		"HTTPS_PROXY=http://127.0.0.1:9", "HTTP_PROXY=http://127.0.0.1:9",
	}
	d := &daemon{log: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.log, d.log
	startProc(t, "regproxy", cmd, false, d.exited, &d.err)
	t.Cleanup(func() { d.stop(t, cmd.Process) })
	d.addr = d.waitListening(t)
	d.waitHealthy(t)
	return d
}

// checkDataOwner checks that the data directory holds the CA and the
// cache, all of it written by the image's user.
func checkDataOwner(t *testing.T, data string) {
	t.Helper()
	err := filepath.WalkDir(data, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != imageUID {
			t.Errorf("%s is not owned by %d", path, imageUID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ca/ca.crt", "ca/ca.key", "cache"} {
		if _, err := os.Stat(filepath.Join(data, want)); err != nil {
			t.Errorf("data directory lacks %s: %v", want, err)
		}
	}
}

// runHealthcheck runs the HEALTHCHECK command, argv with static for
// /regproxy, in a container whose REGPROXY_LISTEN is listen, and returns
// its output.
func runHealthcheck(t *testing.T, static string, argv []string, listen string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, static, argv[1:]...)
	cmd.Env = []string{"REGPROXY_LISTEN=" + listen}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
