#!/bin/sh
# setup-enroot.sh points enroot on this node at regproxy. Run it with
# --help for what it does and takes. The code it shares with the other
# setup scripts is in setup-lib.sh.
set -eu
prog=setup-enroot.sh client=enroot mirror_supported=false
# shellcheck source-path=SCRIPTDIR
# shellcheck source=setup-lib.sh
. "$(dirname "$0")/setup-lib.sh"

dropin=/etc/enroot/enroot.conf.d/regproxy.conf

client_usage() {
	cat <<'EOF'
Points enroot at regproxy, for every user of the node. Run it as root;
running it again is safe.
EOF
	usage_ca_step
	cat <<'EOF'
    enroot's curl trusts that store.
 2. Writes /etc/enroot/enroot.conf.d/regproxy.conf (read by enroot 3.4 and
    later), which sets https_proxy and no_proxy for enroot's curl. enroot
    takes the first value of each that it reads, in the user's environment
    first, then enroot.conf, then enroot.conf.d: the script refuses to run,
    changing nothing, while enroot.conf or another drop-in sets either.
enroot has no daemon: the change applies to the next import.
EOF
}

# enroot_check finds what would keep enroot from using the drop-in: other
# settings of https_proxy or no_proxy, which enroot would read first (or
# which would at least contradict it), and SSL_CERT_FILE or SSL_CERT_DIR,
# which make curl ignore the system trust store.
enroot_check() {
	ec_found=$(
		for ec_file in "$R/etc/enroot/enroot.conf" "$R"/etc/enroot/enroot.conf.d/*.conf; do
			[ -f "$ec_file" ] && [ "$ec_file" != "$R$dropin" ] || continue
			awk -v file="${ec_file#"$R"}" '
			{ line = $0; sub(/^[ \t]+/, "", line) }
			match(line, /^(https_proxy|no_proxy|SSL_CERT_FILE|SSL_CERT_DIR)[ \t=]/) {
				print file ":" NR ": " line
			}' "$ec_file"
		done
	) || die "cannot read enroot's configuration"
	[ -n "$ec_found" ] || return 0
	if printf '%s\n' "$ec_found" | grep -Eq ': (https|no)_proxy'; then
		die "enroot's configuration sets the proxy already; remove these lines and run again:$newline$ec_found"
	fi
	warn "enroot's curl does not read the system trust store, as these lines name another; make sure it holds regproxy's CA:$newline$ec_found"
}

main() {
	setup_args "$@"
	enroot_check
	setup_ca
	if [ -n "$proxy_creds" ]; then
		warn "the proxy password goes into $dropin, which every user can read: enroot runs as them"
	fi
	put "$dropin" 0644 <<EOF || :
# Written by regproxy's $prog: enroot imports docker://
# images through regproxy. enroot passes these to curl, which trusts
# regproxy's CA from the system trust store:
#   ca_sha256=$ca_fp
https_proxy $proxy
no_proxy $no_proxy
EOF
}

main "$@"
