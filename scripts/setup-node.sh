#!/bin/sh
# setup-node.sh is the older entry point, kept for automation that calls
# it: it runs setup-docker.sh and then setup-containerd.sh from its own
# directory. New setups use those (or GET /setup/CLIENT on regproxy's port)
# directly. Run it with --help for what it takes.
set -eu
prog=setup-node.sh

usage() {
	cat <<'EOF'
Usage: setup-node.sh --ca-sha256 HEX PROXY_HOST[:PORT]

Points this node's docker and containerd at the regproxy on PROXY_HOST (port
3128 unless given), by running setup-docker.sh and setup-containerd.sh with
--proxy http://PROXY_HOST:PORT/ and --ca-sha256 HEX. See their --help.
--ca-sha256 is required, as in those scripts: the CA comes over plain HTTP.

Environment, for compatibility:
  REGPROXY_NO_PROXY    hosts reached directly, passed as --no-proxy
  REGPROXY_SETUP_ROOT  passed as --root: write every file under this
                       directory and run no command
EOF
}

die() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 2
}

main() {
	sha='' host=''
	while [ $# -gt 0 ]; do
		case $1 in
		-h | --help)
			usage
			exit 0
			;;
		--ca-sha256)
			[ $# -ge 2 ] || die "--ca-sha256 needs a value"
			sha=$2
			shift
			;;
		--ca-sha256=*) sha=${1#*=} ;;
		-*) die "unknown option $1; see --help" ;;
		*)
			[ -z "$host" ] || die "want one PROXY_HOST[:PORT], got $host and $1"
			host=$1
			;;
		esac
		shift
	done
	[ -n "$host" ] || die "want one PROXY_HOST[:PORT]; see --help"
	set -- --proxy "$host" --ca-sha256 "$sha"
	[ -z "${REGPROXY_NO_PROXY:-}" ] || set -- "$@" --no-proxy "$REGPROXY_NO_PROXY"
	[ -z "${REGPROXY_SETUP_ROOT:-}" ] || set -- "$@" --root "$REGPROXY_SETUP_ROOT"
	dir=$(dirname "$0")
	sh "$dir/setup-docker.sh" "$@"
	sh "$dir/setup-containerd.sh" "$@"
}

main "$@"
