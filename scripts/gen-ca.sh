#!/bin/sh
# gen-ca.sh makes a CA for regproxy with openssl, for admins who would
# rather make it themselves than let regproxy generate one (regproxy ca
# init does the same in Go). Run it with --help for what it takes.
set -eu
prog=gen-ca.sh

# Docker Hub's hosts, which "docker.io" stands for in --name-constraints,
# as it does on regproxy's --registries: package dockerhub's Hosts(). A
# test (cmd/regproxy/setup_genca_test.go) holds the two lists together.
dockerhub_hosts='docker.io registry-1.docker.io index.docker.io auth.docker.io production.cloudflare.docker.com docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com'

usage() {
	cat <<'EOF'
Usage: gen-ca.sh [--out DIR] [--name-constraints HOSTS] [--days N] [--force]

Makes a CA for regproxy with openssl: DIR/ca.key, an ECDSA P-256 key with no
passphrase (mode 0600), and DIR/ca.crt, a self-signed certificate that may
sign leaves but no intermediate CA (pathlen 0). Then it prints the CA's
fingerprint as regproxy logs it (ca_sha256=HEX), for the setup scripts'
--ca-sha256. Start regproxy with it:
  regproxy serve --ca-cert DIR/ca.crt --ca-key DIR/ca.key ...

Options:
  --out DIR               where to write ca.crt and ca.key (default: .)
  --name-constraints HOSTS
                          limit the CA to these registries and the names
                          below them (X.509 name constraints, critical):
                          the hosts of regproxy's --registries, separated
                          by spaces or commas; ports are dropped and
                          docker.io stands for all of Docker Hub's hosts.
                          IP addresses permit only themselves. At least
                          one DNS name is needed. Without this the CA may
                          sign for any name: see README, "The CA".
  --days N                validity (default: 3650)
  --force                 replace an existing DIR/ca.crt or DIR/ca.key
  -h, --help              print this help and exit
EOF
}

die() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 1
}
usage_error() {
	printf '%s: %s\nRun with --help for usage.\n' "$prog" "$*" >&2
	exit 2
}

parse_args() {
	out=. constraints='' days=3650 force=false
	while [ $# -gt 0 ]; do
		case $1 in
		-h | --help)
			usage
			exit 0
			;;
		--out | --name-constraints | --days)
			[ $# -ge 2 ] || usage_error "$1 needs a value"
			set_opt "$1" "$2"
			shift
			;;
		--out=* | --name-constraints=* | --days=*) set_opt "${1%%=*}" "${1#*=}" ;;
		--force) force=true ;;
		-*) usage_error "unknown option $1" ;;
		*) usage_error "unexpected argument $1" ;;
		esac
		shift
	done
	case $days in '' | *[!0-9]*) usage_error "--days $days: want a number of days" ;; esac
	[ -d "$out" ] || usage_error "--out $out: not a directory"
}

set_opt() {
	case $1 in
	--out) out=$2 ;;
	--name-constraints) constraints=$2 ;;
	--days) days=$2 ;;
	esac
}

# name_constraints sets nc to the nameConstraints extension for the hosts
# in $constraints, and permitted to the names it permits. As in regproxy's
# own CA, a name type with no permitted host is excluded outright: clients
# leave a type without permitted subtrees unconstrained.
name_constraints() {
	nc_dns='' nc_ip=''
	set -f # no globbing of the list's words
	# shellcheck disable=SC2046 # split the list on purpose
	set -- $(printf '%s\n' "$constraints" | tr ',' ' ' | tr '[:upper:]' '[:lower:]')
	set +f
	for host in "$@"; do
		[ "$host" != docker.io ] || host=$dockerhub_hosts
		for h in $host; do
			nc_host "$h"
		done
	done
	[ -n "$nc_dns" ] || usage_error "--name-constraints: no DNS name in \"$constraints\""
	nc="nameConstraints = critical$nc_dns${nc_ip:-, excluded;IP:0.0.0.0/0.0.0.0, excluded;IP:::/::}"
	permitted=$(printf '%s\n' "$nc_dns$nc_ip" | sed 's/, permitted;/ /g; s/^ //')
}

# nc_host adds one host (with or without a port) to nc_dns or nc_ip.
nc_host() {
	h=$1
	case $h in
	\[*\]*) # [IPv6], [IPv6]:port
		h=${h#\[}
		h=${h%%\]*}
		;;
	*:*:*) ;;                         # IPv6
	*:*) h=${h%:*} ;;                 # host:port
	esac
	if printf '%s\n' "$h" | grep -Eqx '[0-9]{1,3}(\.[0-9]{1,3}){3}'; then
		nc_ip="$nc_ip, permitted;IP:$h/255.255.255.255"
	elif printf '%s\n' "$h" | grep -Eqx '[0-9a-f:.]*:[0-9a-f:.]*'; then
		nc_ip="$nc_ip, permitted;IP:$h/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
	elif printf '%s\n' "$h" | grep -Eqx '[a-z0-9]([a-z0-9.-]*[a-z0-9])?'; then
		nc_dns="$nc_dns, permitted;DNS:$h"
	else
		usage_error "--name-constraints: bad host $1"
	fi
}

main() {
	parse_args "$@"
	command -v openssl >/dev/null 2>&1 || die "openssl is missing"
	crt=$out/ca.crt key=$out/ca.key
	if ! $force && { [ -e "$crt" ] || [ -e "$key" ]; }; then
		die "$crt or $key exists; --force replaces them, and every node must then trust the new CA"
	fi
	nc='' permitted=''
	[ -z "$constraints" ] || name_constraints

	tmp=$(mktemp -d) || die "cannot make a temporary directory"
	trap 'rm -rf "$tmp"' EXIT
	cn="regproxy CA ($(hostname 2>/dev/null || echo gen-ca.sh))"
	cat >"$tmp/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
O = regproxy
CN = $(printf '%s' "$cn" | cut -c1-64)
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
$nc
EOF
	(umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key" 2>"$tmp/err") ||
		die "openssl genpkey: $(cat "$tmp/err")"
	openssl req -new -x509 -sha256 -days "$days" -key "$tmp/ca.key" -config "$tmp/openssl.cnf" \
		-extensions ca -out "$tmp/ca.crt" 2>"$tmp/err" || die "openssl req: $(cat "$tmp/err")"
	chmod 0644 "$tmp/ca.crt"
	if ! mv -f "$tmp/ca.key" "$key" || ! mv -f "$tmp/ca.crt" "$crt"; then
		die "cannot write $crt and $key"
	fi
	fp=$(openssl x509 -in "$crt" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr 'A-F' 'a-f')
	printf 'wrote %s and %s ca_sha256=%s\n' "$crt" "$key" "$fp"
	[ -z "$permitted" ] || printf 'name constraints: permits %s\n' "$permitted"
}

main "$@"
