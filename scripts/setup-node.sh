#!/usr/bin/env bash
# setup-node.sh points this node's container runtimes at a regproxy cache.
# enroot takes its proxy from enroot.conf instead: see examples/enroot/.
# Run it with --help for what it does and takes.
set -euo pipefail

synopsis='Usage: setup-node.sh [--ca-sha256 HEX] PROXY_HOST[:PORT]'

usage() {
	echo "$synopsis"
	cat <<'EOF'

Points this node's docker and containerd at the regproxy on PROXY_HOST (port
3128 unless given). Run it as root. It is safe to re-run:
 1. Fetch regproxy's CA from http://PROXY_HOST:PORT/ca.crt, print its
    fingerprint as regproxy logs it at start (ca_sha256=HEX), check it against
    --ca-sha256, and add it to the system trust store (Debian/Ubuntu or RHEL
    family).
 2. For docker and containerd, when their systemd unit exists, write
    <unit>.service.d/http-proxy.conf, as in examples/docker/.
 3. Restart a service only if its drop-in or the CA changed: both are read
    only at start. Restarting docker stops its containers unless live-restore
    is set; containers survive a containerd restart.

Options:
  --ca-sha256 HEX  the ca_sha256 that regproxy logs when it starts (colons and
                   capitals are accepted). The CA comes over plain HTTP, so
                   anyone on the path could swap it: give this, and a CA that
                   does not match is refused and nothing is changed.
  -h, --help       print this help and exit

Environment:
  REGPROXY_NO_PROXY    hosts reached directly (default localhost,127.0.0.1)
  REGPROXY_SETUP_ROOT  an existing directory to write every file under, as if
                       it were /; nothing else is run (no update-ca-*, no
                       systemctl, no restarts) and root is not required. Units
                       are found as DIR/{etc,lib,usr/lib}/systemd/system/*.service.
EOF
}

die() {
	echo "setup-node: $*" >&2
	exit 1
}
say() { echo "setup-node: $*"; }

# usage_error reports a bad command line, with the synopsis, and exits 2.
usage_error() {
	printf 'setup-node: %s\n%s\nRun setup-node.sh --help for more.\n' "$*" "$synopsis" >&2
	exit 2
}

want_sha256=
args=()
while (($# > 0)); do
	case $1 in
	-h | --help)
		usage
		exit 0
		;;
	--ca-sha256)
		(($# >= 2)) || usage_error "--ca-sha256 needs a value"
		want_sha256=$2
		shift 2
		;;
	--ca-sha256=*)
		want_sha256=${1#*=}
		shift
		;;
	--)
		shift
		args+=("$@")
		break
		;;
	-*) usage_error "unknown option $1" ;;
	*)
		args+=("$1")
		shift
		;;
	esac
done
((${#args[@]} == 1)) || usage_error "want one PROXY_HOST[:PORT], got ${#args[@]} arguments"

# A bare host, or [IPv6]; then an optional :port.
addr='^(\[[0-9A-Fa-f:.]+\]|[^]:/@[:space:][]+)(:[0-9]+)?$'
[[ ${args[0]} =~ $addr ]] ||
	usage_error "bad proxy address ${args[0]}, want HOST[:PORT] or [IPV6][:PORT]"
proxy="http://${BASH_REMATCH[1]}${BASH_REMATCH[2]:-:3128}/"
no_proxy=${REGPROXY_NO_PROXY:-localhost,127.0.0.1}

if [[ -n $want_sha256 ]]; then
	want_sha256=${want_sha256//:/}
	want_sha256=${want_sha256,,}
	[[ $want_sha256 =~ ^[0-9a-f]{64}$ ]] ||
		usage_error "--ca-sha256: want 64 hex digits, as in regproxy's ca_sha256=... log field"
fi

# root prefixes every path written; empty means the real system.
root=${REGPROXY_SETUP_ROOT:-}
if [[ -n $root ]]; then
	[[ -d $root ]] || die "REGPROXY_SETUP_ROOT=$root is not a directory"
else
	((EUID == 0)) || die "must run as root"
fi
command -v curl >/dev/null 2>&1 || die "curl is missing"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# put writes stdin to the file $1 if its content differs, and returns 1 if it
# was already up to date.
put() {
	cat >"$tmp/new"
	if [[ -f $1 ]] && cmp -s "$tmp/new" "$1"; then
		return 1
	fi
	install -D -m 0644 "$tmp/new" "$1"
}

# cert_der writes the DER of the single certificate in the PEM file $1 to
# stdout, and fails unless $1 holds exactly one.
cert_der() {
	local begin end
	begin=$(grep -c -- '^-----BEGIN CERTIFICATE-----' "$1") || return 1
	end=$(grep -c -- '^-----END CERTIFICATE-----' "$1") || return 1
	((begin == 1 && end == 1)) || return 1
	sed -n '/^-----BEGIN CERTIFICATE-----/,/^-----END CERTIFICATE-----/p' "$1" | sed '1d;$d' | base64 -d
}

# fetch_ca downloads the CA, checks it, and leaves in $tmp/ca.crt a PEM
# re-encoded from the DER whose fingerprint was checked, so that nothing
# else in the download (a second certificate) can ride along into the trust
# store.
fetch_ca() {
	# --noproxy: the node may already send HTTP through a proxy, even this one.
	curl -fsS --noproxy '*' --retry 3 --max-time 30 -o "$tmp/download" "${proxy}ca.crt" ||
		die "cannot fetch ${proxy}ca.crt"
	cert_der "$tmp/download" >"$tmp/ca.der" 2>/dev/null ||
		die "${proxy}ca.crt is not one PEM certificate"
	if command -v openssl >/dev/null 2>&1; then
		openssl x509 -inform der -noout -in "$tmp/ca.der" 2>/dev/null ||
			die "${proxy}ca.crt is not a valid certificate"
	fi
	local sum
	sum=$(sha256sum <"$tmp/ca.der")
	sum=${sum%% *}
	say "CA: ca_sha256=$sum"
	if [[ -z $want_sha256 ]]; then
		say "CA: compare with the ca_sha256 regproxy logs, or pass --ca-sha256"
	elif [[ $sum != "$want_sha256" ]]; then
		die "CA: ca_sha256=$sum from ${proxy}ca.crt does not match --ca-sha256 $want_sha256; nothing installed"
	fi
	{
		echo '-----BEGIN CERTIFICATE-----'
		base64 -w 64 <"$tmp/ca.der"
		echo '-----END CERTIFICATE-----'
	} >"$tmp/ca.crt"
}

# trust_store sets ca_file and ca_update for this system's trust store.
trust_store() {
	if [[ -n $root ]]; then
		# Only the files: pick the layout the fake root has.
		ca_update=()
		if [[ -d $root/etc/pki/ca-trust/source/anchors ]]; then
			ca_file=/etc/pki/ca-trust/source/anchors/regproxy.crt
		else
			ca_file=/usr/local/share/ca-certificates/regproxy.crt
		fi
	elif command -v update-ca-certificates >/dev/null 2>&1; then
		ca_file=/usr/local/share/ca-certificates/regproxy.crt
		ca_update=(update-ca-certificates)
	elif command -v update-ca-trust >/dev/null 2>&1; then
		ca_file=/etc/pki/ca-trust/source/anchors/regproxy.crt
		ca_update=(update-ca-trust extract)
	else
		die "neither update-ca-certificates nor update-ca-trust found; cannot trust the CA"
	fi
}

# 1. The CA.
fetch_ca
trust_store
ca_changed=false
if put "$root$ca_file" <"$tmp/ca.crt"; then
	if ((${#ca_update[@]} > 0)); then
		"${ca_update[@]}" >/dev/null
	fi
	ca_changed=true
	say "CA: installed $root$ca_file"
else
	say "CA: $root$ca_file unchanged"
fi

# unit_exists reports whether systemd has the unit $1.service.
unit_exists() {
	if [[ -n $root ]]; then
		local dir
		for dir in etc lib usr/lib; do
			[[ -f $root/$dir/systemd/system/$1.service ]] && return 0
		done
		return 1
	fi
	local units
	units=$(systemctl list-unit-files --no-legend "$1.service" 2>/dev/null || true)
	[[ $units == "$1.service"* ]]
}

# 2 and 3. The runtimes.
if [[ -z $root ]] && ! command -v systemctl >/dev/null 2>&1; then
	say "no systemctl: docker and containerd not configured"
	exit 0
fi
# Without a running systemd (a chroot, an image build) only write the files.
booted=false
if [[ -z $root && -d /run/systemd/system ]]; then
	booted=true
fi
for unit in docker containerd; do
	if ! unit_exists "$unit"; then
		say "$unit: no $unit.service, skipped"
		continue
	fi
	# HTTPS_PROXY only: regproxy refuses plain-HTTP proxy requests (403), so an
	# HTTP_PROXY would break pulls from http:// registries.
	dropin=$root/etc/systemd/system/$unit.service.d/http-proxy.conf
	changed=$ca_changed
	if put "$dropin" <<EOF; then
# Written by regproxy's scripts/setup-node.sh.
[Service]
Environment="HTTPS_PROXY=$proxy" "NO_PROXY=$no_proxy"
EOF
		say "$unit: wrote $dropin"
		if $booted; then
			systemctl daemon-reload
		fi
		changed=true
	else
		say "$unit: $dropin unchanged"
	fi
	if ! $changed; then
		continue
	fi
	if [[ -n $root ]]; then
		say "$unit: not restarted (REGPROXY_SETUP_ROOT is set)"
	elif ! $booted; then
		say "$unit: systemd not running; the proxy applies when $unit starts"
	elif systemctl is-active --quiet "$unit.service"; then
		systemctl restart "$unit.service"
		say "$unit: restarted"
	else
		say "$unit: not running; the proxy applies when it starts"
	fi
done
