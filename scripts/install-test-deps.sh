#!/usr/bin/env bash
# install-test-deps.sh installs, with apt-get, the tools that regproxy's tests
# drive, skipping any that are already on PATH. It fails loudly instead of
# letting the tests skip: a missing tool is an error, never a silent pass.
#
# To add a tool, add one "command:package[ package...]" line to deps.
set -euo pipefail

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
	# go test -race needs cgo, which needs a C compiler and libc headers.
	"gcc:gcc libc6-dev"
)

die() {
	echo "install-test-deps: $*" >&2
	exit 1
}

missing=() packages=()
for dep in "${deps[@]}"; do
	cmd=${dep%%:*}
	if ! command -v "$cmd" >/dev/null 2>&1; then
		missing+=("$cmd")
		read -ra pkgs <<<"${dep#*:}"
		packages+=("${pkgs[@]}")
	fi
done
if ((${#missing[@]} == 0)); then
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
	command -v "$cmd" >/dev/null 2>&1 ||
		die "missing $cmd: still not on PATH after installing ${packages[*]}"
	version=$("$cmd" --version 2>&1) ||
		die "$cmd --version failed after install: $version"
	echo "install-test-deps: ${version%%$'\n'*}"
done
