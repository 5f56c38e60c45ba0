#!/usr/bin/env bash
# setup-node.sh points this node's container runtimes at a regproxy cache.
#
# Usage: setup-node.sh PROXY_HOST[:PORT]    (as root; the port defaults to 3128)
#
# It is safe to re-run:
#  1. Fetch regproxy's CA from http://PROXY_HOST:PORT/ca.crt and add it to the
#     system trust store (Debian/Ubuntu or RHEL family).
#  2. For docker and containerd, when their systemd unit exists, write
#     <unit>.service.d/http-proxy.conf, as in examples/docker/.
#  3. Restart a service only if its drop-in or the CA changed: both are read
#     only at start. Restarting docker stops its containers unless live-restore
#     is set; containers survive a containerd restart.
# enroot takes its proxy from enroot.conf instead: see examples/enroot/.
#
# Set REGPROXY_NO_PROXY to change the hosts reached directly
# (default localhost,127.0.0.1).
set -euo pipefail

die() {
	echo "setup-node: $*" >&2
	exit 1
}
say() { echo "setup-node: $*"; }

(($# == 1)) || die "usage: $0 PROXY_HOST[:PORT]"
# A bare host, or [IPv6]; then an optional :port.
addr='^(\[[0-9A-Fa-f:.]+\]|[^]:/@[:space:][]+)(:[0-9]+)?$'
[[ $1 =~ $addr ]] ||
	die "bad proxy address $1, want HOST[:PORT] or [IPV6][:PORT]"
proxy="http://${BASH_REMATCH[1]}${BASH_REMATCH[2]:-:3128}/"
no_proxy=${REGPROXY_NO_PROXY:-localhost,127.0.0.1}

((EUID == 0)) || die "must run as root"
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

# 1. The CA. It comes over plain HTTP, so anyone on the path could swap it:
# compare the fingerprint printed below with the one on the proxy host.
# --noproxy: the node may already send HTTP through a proxy, even this one.
curl -fsS --noproxy '*' --retry 3 --max-time 30 -o "$tmp/ca.crt" "${proxy}ca.crt" ||
	die "cannot fetch ${proxy}ca.crt"
grep -q -- '-----BEGIN CERTIFICATE-----' "$tmp/ca.crt" ||
	die "${proxy}ca.crt is not a PEM certificate"
if command -v openssl >/dev/null 2>&1; then
	fingerprint=$(openssl x509 -noout -fingerprint -sha256 -in "$tmp/ca.crt") ||
		die "${proxy}ca.crt is not a valid certificate"
	say "CA: $fingerprint"
fi
if command -v update-ca-certificates >/dev/null 2>&1; then
	ca_file=/usr/local/share/ca-certificates/regproxy.crt
	ca_update=(update-ca-certificates)
elif command -v update-ca-trust >/dev/null 2>&1; then
	ca_file=/etc/pki/ca-trust/source/anchors/regproxy.crt
	ca_update=(update-ca-trust extract)
else
	die "neither update-ca-certificates nor update-ca-trust found; cannot trust the CA"
fi
ca_changed=false
if put "$ca_file" <"$tmp/ca.crt"; then
	"${ca_update[@]}" >/dev/null
	ca_changed=true
	say "CA: installed $ca_file"
else
	say "CA: $ca_file unchanged"
fi

# 2 and 3. The runtimes.
if ! command -v systemctl >/dev/null 2>&1; then
	say "no systemctl: docker and containerd not configured"
	exit 0
fi
# Without a running systemd (a chroot, an image build) only write the files.
booted=false
if [[ -d /run/systemd/system ]]; then
	booted=true
fi
for unit in docker containerd; do
	units=$(systemctl list-unit-files --no-legend "$unit.service" 2>/dev/null || true)
	if [[ $units != "$unit.service"* ]]; then
		say "$unit: no $unit.service, skipped"
		continue
	fi
	# HTTPS_PROXY only: regproxy refuses plain-HTTP proxy requests (403), so an
	# HTTP_PROXY would break pulls from http:// registries.
	dropin=/etc/systemd/system/$unit.service.d/http-proxy.conf
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
	if ! $booted; then
		say "$unit: systemd not running; the proxy applies when $unit starts"
	elif systemctl is-active --quiet "$unit.service"; then
		systemctl restart "$unit.service"
		say "$unit: restarted"
	else
		say "$unit: not running; the proxy applies when it starts"
	fi
done
