#!/bin/sh
# shellcheck shell=sh
#
# setup-lib.sh is the code that regproxy's node setup scripts share:
# options, the CA, file writes, restarts. It does nothing when run alone.
#
# How the scripts are put together, and why: a node runs a setup script in
# one of two ways, and both must run the same code.
#   - From a checkout (scripts/setup-docker.sh ...): each script sources
#     this file from its own directory.
#   - Served by regproxy (curl -fsS http://PROXY:3128/setup/docker | sh -s --
#     ...): a pipe into sh can source nothing, so regproxy (proxy/setup.go)
#     serves each script as one file, with this file in place of the line
#     that sources it, and fills in the two served_ lines below.
# The tests run both ways and compare what they write.
#
# Everything is POSIX sh, as the served scripts run under whatever sh the
# node has (dash on Debian). Each script defines functions only and calls
# main on its last line, so that a download cut short runs nothing.

# Filled in by regproxy when it serves a script: its proxy port as the node
# named it (http://HOST:PORT/), and its --registries. Empty in a checkout.
served_proxy=
served_registries=

# The registries of --mirror when regproxy did not fill them in: regproxy's
# default --registries.
default_registries='docker.io quay.io gcr.io nvcr.io registry.k8s.io ghcr.io'

# Hosts every client reaches directly; --no-proxy adds to them.
default_no_proxy='localhost,127.0.0.1,::1'

newline='
'

# Set by the script that sources this file, before it does so: its name
# (prog), the client it sets up (client), whether it has a --mirror mode
# (true or false), and what restart says before restarting its daemon.
: "${prog:?}" "${client:?}" "${mirror_supported:?}" "${restart_note=}"

say() { printf '%s: %s\n' "$prog" "$*"; }
warn() { printf '%s: warning: %s\n' "$prog" "$*" >&2; }
die() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 1
}

# usage_error reports a bad command line and exits 2.
usage_error() {
	printf '%s: %s\nRun with --help for usage.\n' "$prog" "$*" >&2
	exit 2
}

# matches STRING ERE reports whether STRING, one line, matches ERE whole.
matches() {
	case $1 in *"$newline"*) return 1 ;; esac
	printf '%s\n' "$1" | grep -Eq "^($2)\$"
}

# The address forms the scripts accept: a DNS name or an [IPv6] literal,
# and an optional port.
host_re='[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]'
port_re=':[0-9]{1,5}'
# URL userinfo, in the characters that need no quoting in a systemd
# drop-in, an enroot.conf line (which enroot passes through eval) or TOML.
# Others must be percent-encoded.
userinfo_re='[A-Za-z0-9._~%-]+:[A-Za-z0-9._~%-]*'

usage() {
	cat <<EOF
Usage: $prog --ca-sha256 HEX [--proxy URL] [options]
   or: curl -fsS http://PROXY:3128/setup/$client | sh -s -- --ca-sha256 HEX [options]

EOF
	client_usage
	cat <<EOF

Options:
  --proxy URL      regproxy's proxy port: http://HOST[:PORT]/, port 3128 if
                   left out. It may carry USER:PASSWORD@ for --htpasswd.
EOF
	if [ -n "$served_proxy" ]; then
		printf '                   Default: %s, where this script came from.\n' "$served_proxy"
	fi
	cat <<EOF
  --ca-sha256 HEX  the SHA-256 of regproxy's CA certificate (DER), as regproxy
                   logs it at start: ca_sha256=HEX. The CA comes over plain
                   HTTP, so a CA that does not match is refused before
                   anything is changed. Required, unless:
  --insecure-skip-fingerprint
                   trust whatever CA the proxy port serves, unchecked
  --ca-file FILE   take the CA from FILE instead of PROXY/ca.crt
  --no-proxy LIST  more hosts to reach directly, comma-separated; always
                   direct: $default_no_proxy
EOF
	if $mirror_supported; then
		cat <<EOF
  --mirror URL     pull through regproxy's registry mirror (serve
                   --mirror-listen) at URL, http://HOST:PORT or
                   https://HOST[:PORT], instead of through its proxy port.
                   A plain-HTTP mirror needs no CA, and none is installed.
  --registries LIST
                   the registries to pull through the mirror, separated by
                   spaces or commas. Default: ${served_registries:-$default_registries}.
                   containerd also takes _default: every other registry.
EOF
	fi
	cat <<EOF
  --root DIR       write every file under DIR instead of /, and run no
                   command (no update-ca-*, no systemctl); needs no root
  --dry-run        print what would change, with diffs; change nothing
  --no-restart     restart nothing; say what to restart instead
  -h, --help       print this help and exit

Exit status: 0 done, 1 failed (a refused CA changes nothing), 2 bad usage.
EOF
}

# parse_args reads the command line into the opt_ variables. --help wins
# wherever it is, before anything else happens.
parse_args() {
	for arg in "$@"; do
		case $arg in
		--) break ;;
		-h | --help)
			usage
			exit 0
			;;
		esac
	done
	opt_root=/ opt_proxy=$served_proxy opt_mirror='' opt_sha256='' opt_ca_file='' opt_no_proxy=''
	opt_registries=${served_registries:-$default_registries}
	dry_run=false restart_ok=true skip_fp=false
	while [ $# -gt 0 ]; do
		opt=$1 val='' has_val=false
		case $opt in
		--*=*)
			val=${opt#*=}
			opt=${opt%%=*}
			has_val=true
			;;
		esac
		case $opt in
		--root | --proxy | --mirror | --registries | --ca-sha256 | --ca-file | --no-proxy)
			if ! $has_val; then
				[ $# -ge 2 ] || usage_error "$opt needs a value"
				val=$2
				shift
			fi
			set_opt "$opt" "$val"
			;;
		--dry-run | --no-restart | --insecure-skip-fingerprint)
			$has_val && usage_error "$opt takes no value"
			case $opt in
			--dry-run) dry_run=true ;;
			--no-restart) restart_ok=false ;;
			*) skip_fp=true ;;
			esac
			;;
		--)
			shift
			[ $# -eq 0 ] || usage_error "unexpected argument $1"
			break
			;;
		-*) usage_error "unknown option $opt" ;;
		*) usage_error "unexpected argument $opt (give the proxy as --proxy URL)" ;;
		esac
		shift
	done
}

set_opt() {
	case $1 in
	--root) opt_root=$2 ;;
	--proxy) opt_proxy=$2 ;;
	--mirror)
		$mirror_supported || usage_error "$client has no --mirror mode: it pulls through the proxy port"
		opt_mirror=$2
		;;
	--registries) opt_registries=$2 ;;
	--ca-sha256) opt_sha256=$2 ;;
	--ca-file) opt_ca_file=$2 ;;
	--no-proxy) opt_no_proxy=$2 ;;
	esac
}

# check_args validates the options and sets what the rest reads: R (the
# root, empty for /), proxy, proxy_hostport, proxy_creds, mirror,
# mirror_scheme, registries, no_proxy, need_ca.
check_args() {
	[ -d "$opt_root" ] || usage_error "--root $opt_root: not a directory"
	R=$(cd -P -- "$opt_root" && pwd -P) || usage_error "--root $opt_root: cannot enter it"
	[ "$R" != / ] || R=

	mirror='' mirror_scheme=''
	if [ -n "$opt_mirror" ]; then
		matches "$opt_mirror" "https?://($host_re)($port_re)?/?" ||
			usage_error "--mirror $opt_mirror: want http://HOST:PORT or https://HOST[:PORT]"
		mirror=${opt_mirror%/}
		mirror_scheme=${mirror%%://*}
		registries=''
		set -f # no globbing of the list's words
		for reg in $(printf '%s\n' "$opt_registries" | tr ',' ' ' | tr '[:upper:]' '[:lower:]'); do
			matches "$reg" "($host_re)($port_re)?|_default" || usage_error "--registries: bad registry $reg"
			registries="$registries $reg"
		done
		set +f
		registries=${registries# }
		[ -n "$registries" ] || usage_error "--registries: empty list"
	fi

	# The proxy's CA: needed for the proxy port and for a TLS mirror.
	need_ca=true
	[ "$mirror_scheme" != http ] || need_ca=false
	if $need_ca; then
		if [ -n "$opt_sha256" ]; then
			$skip_fp && usage_error "--ca-sha256 and --insecure-skip-fingerprint exclude each other"
			want_sha256=$(printf '%s' "$opt_sha256" | tr -d ':' | tr 'A-F' 'a-f')
			matches "$want_sha256" '[0-9a-f]{64}' ||
				usage_error "--ca-sha256: want 64 hex digits, as in regproxy's ca_sha256=... log field"
		elif ! $skip_fp; then
			usage_error "--ca-sha256 HEX is required: the ca_sha256=... that regproxy logs at start. The CA comes over plain HTTP and must be checked (or pass --insecure-skip-fingerprint)"
		fi
	fi

	proxy='' proxy_hostport='' proxy_creds=''
	if [ -z "$mirror" ] || { $need_ca && [ -z "$opt_ca_file" ]; }; then
		[ -n "$opt_proxy" ] || usage_error "no proxy address: give --proxy http://HOST:3128/"
		parse_proxy "$opt_proxy"
	fi

	no_proxy=$default_no_proxy
	if [ -n "$opt_no_proxy" ]; then
		matches "$opt_no_proxy" '[][A-Za-z0-9.,:/*_-]+' || usage_error "--no-proxy $opt_no_proxy: want a comma-separated list of hosts"
		no_proxy=$no_proxy,${opt_no_proxy#,}
	fi
}

# parse_proxy sets proxy (http://[USER:PASSWORD@]HOST:PORT/), proxy_hostport
# and proxy_creds from --proxy, which may leave out the scheme, the port
# (3128) and the slash.
parse_proxy() {
	pp=${1#http://}
	pp=${pp%/}
	matches "$pp" "(($userinfo_re)@)?($host_re)($port_re)?" ||
		usage_error "--proxy $1: want http://HOST[:PORT]/ (regproxy's port speaks plain HTTP; percent-encode a password)"
	case $pp in
	*@*)
		proxy_creds=${pp%%@*}
		pp=${pp#*@}
		;;
	esac
	case $pp in
	\[*\]) pp=$pp:3128 ;; # [IPv6] without a port
	\[* | *:*) ;;
	*) pp=$pp:3128 ;;
	esac
	proxy_hostport=$pp
	proxy=http://${proxy_creds:+$proxy_creds@}$pp/
}

# preflight checks, before anything changes, that this run can finish.
preflight() {
	if [ -n "$R" ]; then
		say "writing under --root; running no command (no update-ca-*, no systemctl)"
	elif ! $dry_run && [ "$(id -u)" != 0 ]; then
		die "run as root (or with --dry-run, or --root DIR)"
	fi
	$need_ca || return 0
	command -v openssl >/dev/null 2>&1 || die "openssl is missing: install it (Debian: apt-get install openssl)"
	if [ -z "$opt_ca_file" ]; then
		command -v curl >/dev/null 2>&1 || die "curl is missing: install it, or give --ca-file"
	fi
	trust_store
	if [ -z "$R" ] && ! $dry_run; then
		command -v "$ca_update" >/dev/null 2>&1 ||
			die "$ca_update is missing: cannot add the CA to the system trust store (Debian: apt-get install ca-certificates)"
	fi
}

# trust_store sets ca_file and ca_update for the system trust store under
# the root: the RHEL family's if it has one, else Debian's and Ubuntu's.
trust_store() {
	if [ -d "$R/etc/pki/ca-trust/source/anchors" ]; then
		ca_file=/etc/pki/ca-trust/source/anchors/regproxy.crt
		ca_update=update-ca-trust
	else
		ca_file=/usr/local/share/ca-certificates/regproxy.crt
		ca_update=update-ca-certificates
	fi
}

# get_ca fetches the CA (or reads --ca-file), checks it, and leaves in
# $tmp/ca.pem a PEM re-encoded from the one certificate whose fingerprint
# was checked, so that nothing else in the download rides along into the
# trust store. ca_fp is its fingerprint, in the format regproxy logs:
# lowercase hex of the SHA-256 of the DER certificate.
get_ca() {
	if [ -n "$opt_ca_file" ]; then
		ca_from=$opt_ca_file
		cp -- "$opt_ca_file" "$tmp/download" 2>/dev/null || die "cannot read --ca-file $opt_ca_file"
	else
		ca_from=http://$proxy_hostport/ca.crt
		# --noproxy: the node may send HTTP through a proxy already, even this one.
		curl -fsS --noproxy '*' --connect-timeout 10 --max-time 30 --retry 2 \
			-o "$tmp/download" "$ca_from" </dev/null || die "cannot fetch $ca_from"
	fi
	certs=$(grep -c -e '-----BEGIN CERTIFICATE-----' "$tmp/download") || certs=0
	[ "$certs" = 1 ] || die "$ca_from holds $certs PEM certificates, want 1"
	openssl x509 -in "$tmp/download" -out "$tmp/ca.pem" 2>/dev/null ||
		die "$ca_from is not a valid certificate"
	ca_fp=$(openssl x509 -in "$tmp/ca.pem" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr 'A-F' 'a-f')
	matches "$ca_fp" '[0-9a-f]{64}' || die "cannot compute the SHA-256 of $ca_from"
	if $skip_fp; then
		warn "CA: ca_sha256=$ca_fp from $ca_from, NOT checked (--insecure-skip-fingerprint)"
	elif [ "$ca_fp" != "$want_sha256" ]; then
		die "CA: ca_sha256=$ca_fp from $ca_from does not match --ca-sha256 $want_sha256; nothing changed"
	else
		say "CA: ca_sha256=$ca_fp from $ca_from matches --ca-sha256"
	fi
}

# install_ca puts the checked CA into the system trust store and updates
# the store, if it was not there already.
install_ca() {
	put "$ca_file" 0644 <"$tmp/ca.pem" || return 0
	changed=true
	case $ca_update in
	update-ca-trust) run update-ca-trust extract ;;
	*) run "$ca_update" ;;
	esac
}

# put FILE MODE writes its standard input to FILE, a path on the node (put
# under --root), with MODE, unless FILE holds that already. It returns 0 if
# FILE changed or, under --dry-run, would have, and 1 if not. Writes are
# atomic: a temporary file in FILE's directory, renamed over it.
put() {
	put_file=$R$1
	cat >"$tmp/new" || die "cannot buffer $1"
	if [ -f "$put_file" ] && cmp -s "$tmp/new" "$put_file"; then
		say "$1 unchanged"
		return 1
	fi
	if $dry_run; then
		say "would write $1:"
		put_old=/dev/null
		[ ! -f "$put_file" ] || put_old=$put_file
		# A certificate's diff says nothing; its fingerprint was printed.
		if command -v diff >/dev/null 2>&1 && ! grep -q -e '-----BEGIN CERTIFICATE-----' "$tmp/new"; then
			diff -u -L "$1" -L "$1" "$put_old" "$tmp/new" | sed 's/^/    /'
		fi
		return 0
	fi
	mkdir -p -- "$(dirname -- "$put_file")" || die "cannot create the directory of $1"
	{
		(umask 077 && cp -- "$tmp/new" "$put_file.regproxy-new") &&
			chmod "$2" "$put_file.regproxy-new" &&
			mv -f -- "$put_file.regproxy-new" "$put_file"
	} || {
		rm -f -- "$put_file.regproxy-new"
		die "cannot write $1"
	}
	say "wrote $1"
	return 0
}

# run CMD [ARG...] runs a command that changes the running system, or says
# why it does not (--dry-run, --root).
run() {
	if $dry_run; then
		say "would run: $*"
	elif [ -n "$R" ]; then
		say "not running $* (--root)"
	else
		"$@" </dev/null >/dev/null || die "$* failed"
		say "ran $*"
	fi
}

# proxy_dropin UNIT writes the systemd drop-in that gives UNIT the proxy in
# its environment. With a password in the proxy URL the variables go into
# a file only root can read, since systemctl show prints Environment= to
# every user. Sets changed if either file changed.
proxy_dropin() {
	pd_dir=/etc/systemd/system/$1.service.d
	if [ -n "$proxy_creds" ]; then
		if put "$pd_dir/http-proxy.env" 0600 <<EOF; then changed=true; fi
HTTPS_PROXY=$proxy
NO_PROXY=$no_proxy
EOF
		pd_env="EnvironmentFile=$pd_dir/http-proxy.env"
	else
		pd_env="Environment=\"HTTPS_PROXY=$proxy\" \"NO_PROXY=$no_proxy\""
	fi
	if put "$pd_dir/http-proxy.conf" 0644 <<EOF; then changed=true; fi
# Written by regproxy's $prog:
# $1 pulls images through regproxy, trusting its CA from the system
# trust store:
#   ca_sha256=$ca_fp
# $1 reads that store only at start, so a new CA rewrites this file,
# and restarts $1.
# No HTTP_PROXY: regproxy refuses plain-HTTP proxy requests (403), which
# would break pulls from http:// registries.
[Service]
$pd_env
EOF
}

# restart UNIT restarts a systemd unit that is running, if this run changed
# something it reads only at start ($changed).
restart() {
	if ! $changed; then
		say "$1: nothing it reads at start changed; not restarted"
	elif $dry_run; then
		say "would restart $1 if it is running"
	elif [ -n "$R" ]; then
		say "$1: not restarted (--root)"
	elif ! command -v systemctl >/dev/null 2>&1 || [ ! -d /run/systemd/system ]; then
		say "$1: systemd is not running; the change applies when $1 starts"
	else
		systemctl daemon-reload </dev/null || die "systemctl daemon-reload failed"
		if ! $restart_ok; then
			say "$1: not restarted (--no-restart); to apply: systemctl restart $1"
		elif systemctl is-active --quiet "$1.service" </dev/null; then
			say "$1: restarting$restart_note"
			systemctl restart "$1.service" </dev/null || die "systemctl restart $1 failed"
			say "$1: restarted"
		else
			say "$1: not running; the change applies when it starts"
		fi
	fi
}

# usage_ca_step prints step 1 of every script's description.
usage_ca_step() {
	cat <<'EOF'
 1. Fetches regproxy's CA from PROXY/ca.crt, checks it against --ca-sha256,
    and adds it to the system trust store: /usr/local/share/ca-certificates
    and update-ca-certificates on Debian and Ubuntu, or
    /etc/pki/ca-trust/source/anchors and update-ca-trust on the RHEL family.
EOF
}

# setup runs the steps every script shares: setup_args, then setup_ca.
# The script then writes its own files, setting changed when its daemon
# must restart, and calls restart if it has a daemon.
setup() {
	setup_args "$@"
	setup_ca
}

# setup_args reads and checks the command line, and checks that this run
# can finish. It changes nothing.
setup_args() {
	parse_args "$@"
	check_args
	tmp=$(mktemp -d) || die "cannot make a temporary directory"
	trap 'rm -rf "$tmp"' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	preflight
	changed=false ca_fp=''
}

# setup_ca gets the CA, checks it and installs it, if the client needs it.
setup_ca() {
	if ! $need_ca; then
		say "CA: a plain-HTTP mirror needs none; none installed"
		return 0
	fi
	get_ca
	install_ca
}
