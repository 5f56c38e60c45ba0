#!/bin/sh
# setup-podman.sh points podman on this node at regproxy. Run it with
# --help for what it does and takes. The code it shares with the other
# setup scripts is in setup-lib.sh.
set -eu
prog=setup-podman.sh client=podman mirror_supported=true
# shellcheck source-path=SCRIPTDIR
# shellcheck source=setup-lib.sh
. "$(dirname "$0")/setup-lib.sh"

client_usage() {
	cat <<'EOF'
Points podman at regproxy, for every user of the node. Run it as root;
running it again is safe.
EOF
	usage_ca_step
	cat <<'EOF'
 2. Writes /etc/containers/containers.conf.d/regproxy.conf, which sets
    HTTPS_PROXY and NO_PROXY in podman's own environment ([engine] env), and
    keeps containers from inheriting them ([containers] http_proxy = false),
    as docker's containers do not inherit dockerd's.
    With --mirror instead: writes /etc/containers/registries.conf.d/
    regproxy.conf, which names the mirror, with the registry as the first
    component of its path, for each of --registries but those with a port;
    the registry itself serves if the mirror fails. skopeo, buildah and CRI-O read it too (CRI-O
    after systemctl reload crio).
podman has no daemon: the change applies to the next pull. A user's own
HTTPS_PROXY, or containers.conf in their home, wins over the proxy mode's
file.
EOF
}

podman_proxy() {
	if [ -n "$proxy_creds" ]; then
		warn "the proxy password goes into /etc/containers/containers.conf.d/regproxy.conf, which every user can read: podman runs as them"
	fi
	put /etc/containers/containers.conf.d/regproxy.conf 0644 <<EOF || :
# Written by regproxy's $prog: podman pulls images through
# regproxy, trusting its CA from the system trust store:
#   ca_sha256=$ca_fp
[engine]
env = ["HTTPS_PROXY=$proxy", "NO_PROXY=$no_proxy"]

[containers]
# Containers do not inherit podman's proxy, as docker's do not inherit
# dockerd's: regproxy would intercept their own requests to registries with
# a CA they do not trust. Remove this line to pass them the proxy.
http_proxy = false
EOF
}

podman_mirror() {
	{
		cat <<EOF
# Written by regproxy's $prog: podman, skopeo, buildah and
# CRI-O pull these registries through regproxy's mirror, and from the
# registry itself if the mirror fails. The mirror takes the registry as the
# first component of the path.
EOF
		for reg in $registries; do
			case $reg in
			_default)
				warn "_default left out: registries.conf has no such entry"
				continue
				;;
			*:[0-9]*)
				# The mirror's path prefix is a repository name component,
				# which cannot hold a port.
				warn "$reg left out: a registry with a port cannot be a path prefix on the mirror"
				continue
				;;
			esac
			printf '\n[[registry]]\nprefix = "%s"\nlocation = "%s"\n\n' "$reg" "$reg"
			printf '[[registry.mirror]]\nlocation = "%s/%s"\n' "${mirror#*://}" "$reg"
			[ "$mirror_scheme" != http ] || printf 'insecure = true # the mirror speaks plain HTTP\n'
		done
	} >"$tmp/registries.conf"
	put /etc/containers/registries.conf.d/regproxy.conf 0644 <"$tmp/registries.conf" || :
}

main() {
	setup "$@"
	if [ -n "$mirror" ]; then
		podman_mirror
	else
		podman_proxy
	fi
}

main "$@"
