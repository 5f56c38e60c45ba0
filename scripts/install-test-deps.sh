#!/usr/bin/env bash
# install-test-deps.sh installs, with apt-get, the tools that regproxy's tests
# drive, skipping any that are already on PATH, and then Azurite (the Azure
# Blob Storage emulator) with npm into .cache/azurite, where the tests of
# cachestore/azure look for azurite-blob. It fails loudly instead of letting
# the tests skip: a missing tool is an error, never a silent pass.
#
# To add a tool, add one "command:package[ package...]" line to deps.
set -euo pipefail
cd "$(dirname "$0")/.."

# AZURITE_VERSION is the last release whose package.json accepts the
# Node.js of Debian 12 (18) and of this project's machines (20).
AZURITE_VERSION=3.35.0
AZURITE_DIR=.cache/azurite

deps=(
	"skopeo:skopeo"
	# The client matrix (cmd/regproxy/*_test.go) drives real daemons and
	# clients. A docker CLI alone may be on PATH; the daemon is what counts.
	"dockerd:docker.io"
	"ctr:containerd"
	"podman:podman"
	"curl:curl"
	# TestShellcheck lints scripts/*.sh.
	"shellcheck:shellcheck"
	# The setup scripts check the CA with it, and gen-ca.sh makes one.
	"openssl:openssl"
	# go test -race needs cgo, which needs a C compiler and libc headers.
	"gcc:gcc libc6-dev"
	# make bench (and its quick run in go test) measures nginx's proxy_cache
	# as a peer. Debian puts nginx in /usr/sbin.
	"nginx:nginx-light"
	# The status page test (proxy/status_browser_test.go) renders the page
	# in headless Chromium, which chromedp drives.
	"chromium:chromium"
	# The examples' tests (cmd/regproxy/examples_test.go) check each
	# example with the program that reads it: the Ansible playbook with
	# ansible-playbook (ansible-core: the builtin modules are all it uses),
	# the systemd unit with systemd-analyze, the Compose file with
	# docker-compose config.
	"ansible-playbook:ansible-core"
	"systemd-analyze:systemd"
	"docker-compose:docker-compose"
	# npm installs Azurite, which runs on node (install_azurite below).
	"node:nodejs"
	"npm:npm"
)

die() {
	echo "install-test-deps: $*" >&2
	exit 1
}

# found reports whether cmd is on PATH. The bench also looks for nginx in
# /usr/sbin, which a user's PATH may lack.
found() {
	command -v "$1" >/dev/null 2>&1 || [[ $1 == nginx && -x /usr/sbin/nginx ]]
}

# version prints cmd's version; nginx knows only -v.
version() {
	if [[ $1 != nginx ]]; then
		"$1" --version 2>&1
	elif command -v nginx >/dev/null 2>&1; then
		nginx -v 2>&1
	else
		/usr/sbin/nginx -v 2>&1
	fi
}

# install_azurite installs azurite@AZURITE_VERSION into AZURITE_DIR unless
# that version is there already. It is local to the work tree (and ignored
# by git), so that tests need neither the network nor a global install.
install_azurite() {
	local bin=$AZURITE_DIR/node_modules/.bin/azurite-blob version
	if [[ -x $bin && $("$bin" --version 2>/dev/null) == "$AZURITE_VERSION" ]]; then
		return 0
	fi
	echo "install-test-deps: installing azurite@$AZURITE_VERSION into $AZURITE_DIR with npm"
	# --ignore-scripts: azurite-blob needs no install script, so none of
	# its hundreds of dependencies gets to run one.
	npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --ignore-scripts --omit=dev \
		"azurite@$AZURITE_VERSION" >&2 ||
		die "npm install azurite@$AZURITE_VERSION into $AZURITE_DIR failed"
	version=$("$bin" --version 2>&1) ||
		die "$bin --version failed after install: $version"
	[[ $version == "$AZURITE_VERSION" ]] ||
		die "$bin is version $version after install, want $AZURITE_VERSION"
	echo "install-test-deps: azurite-blob $version in $AZURITE_DIR"
}

missing=() packages=()
for dep in "${deps[@]}"; do
	cmd=${dep%%:*}
	if ! found "$cmd"; then
		missing+=("$cmd")
		read -ra pkgs <<<"${dep#*:}"
		packages+=("${pkgs[@]}")
	fi
done
if ((${#missing[@]} == 0)); then
	install_azurite
	exit 0
fi
echo "install-test-deps: installing ${packages[*]} for ${missing[*]}"

# sudo -n fails instead of waiting for a password nobody will type in CI.
sudo=()
if ((EUID != 0)); then
	command -v sudo >/dev/null 2>&1 ||
		die "missing ${missing[*]}: not root and no sudo; install Debian packages: ${packages[*]}"
	sudo=(sudo -n)
fi
command -v apt-get >/dev/null 2>&1 ||
	die "missing ${missing[*]}: no apt-get here; install ${missing[*]} with your package manager"

apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q)
"${apt[@]}" update ||
	die "missing ${missing[*]}: apt-get update failed"
"${apt[@]}" install -y --no-install-recommends "${packages[@]}" ||
	die "missing ${missing[*]}: apt-get install ${packages[*]} failed"

hash -r
for cmd in "${missing[@]}"; do
	found "$cmd" ||
		die "missing $cmd: still not on PATH after installing ${packages[*]}"
	version=$(version "$cmd") ||
		die "$cmd: asking its version failed after install: $version"
	echo "install-test-deps: ${version%%$'\n'*}"
done

install_azurite
