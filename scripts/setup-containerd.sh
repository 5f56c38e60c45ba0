#!/bin/sh
# setup-containerd.sh points containerd on this node, and so Kubernetes
# through CRI, at regproxy. Run it with --help for what it does and takes.
# The code it shares with the other setup scripts is in setup-lib.sh.
set -eu
prog=setup-containerd.sh client=containerd mirror_supported=true
restart_note=' (running containers are not affected)'
# shellcheck source-path=SCRIPTDIR
# shellcheck source=setup-lib.sh
. "$(dirname "$0")/setup-lib.sh"

client_usage() {
	cat <<'EOF'
Points containerd, and Kubernetes through CRI, at regproxy. Run it as root;
running it again is safe.
EOF
	usage_ca_step
	cat <<'EOF'
 2. Writes /etc/systemd/system/containerd.service.d/http-proxy.conf, which
    sets HTTPS_PROXY and NO_PROXY for containerd. On a Kubernetes node, add
    the cluster's service domain and ranges with --no-proxy.
    With --mirror instead: writes /etc/containerd/certs.d/REGISTRY/hosts.toml
    for each of --registries (HOST_PORT_ for a HOST:PORT; _default, if
    listed, for every other registry), naming the mirror, to which
    containerd adds ?ns=REGISTRY, and REGISTRY itself if the mirror fails. CRI reads them only if /etc/containerd/config.toml sets
    config_path: the script adds it to a config.toml without registry
    settings (Debian's), or writes one if there is none, and otherwise says
    what to add. ctr reads them with --hosts-dir /etc/containerd/certs.d.
 3. Restarts containerd if it runs and the CA, the drop-in or config.toml
    changed: containerd reads them only at start (hosts.toml at each pull).
    Running containers are not affected.
EOF
}

# cri_toml is what CRI needs to read hosts.toml files: containerd 1.x reads
# none unless config.toml names their directory (2.x does by default).
cri_toml() {
	cat <<'EOF'
# Added by regproxy's setup-containerd.sh: CRI (Kubernetes) finds each
# registry's mirrors in config_path/REGISTRY/hosts.toml.
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
EOF
}

# cri_config makes CRI read the hosts.toml files, and sets hosts_dir to the
# directory it reads them from.
cri_config() {
	cc_file=/etc/containerd/config.toml
	hosts_dir=/etc/containerd/certs.d
	if [ ! -f "$R$cc_file" ]; then
		{
			printf 'version = 2\n\n'
			cri_toml
		} >"$tmp/config.toml"
	else
		cc_path=$(sed -n "s/^[[:space:]]*config_path[[:space:]]*=[[:space:]]*[\"']\([^\"']*\)[\"'].*/\1/p" "$R$cc_file" | head -n 1)
		if [ -n "$cc_path" ]; then
			hosts_dir=${cc_path%%:*}
			return 0
		fi
		# containerd 2.x (version 3) reads /etc/containerd/certs.d anyway.
		! grep -Eq '^[[:space:]]*version[[:space:]]*=[[:space:]]*3' "$R$cc_file" || return 0
		# Anything about registries already there (mirrors, configs, dotted
		# keys) might clash with the table appended below.
		if ! grep -Eq '^[[:space:]]*version[[:space:]]*=[[:space:]]*2' "$R$cc_file" ||
			grep -v '^[[:space:]]*#' "$R$cc_file" | grep -q registry; then
			warn "$cc_file has registry settings or is not version 2, so it is left alone. CRI (Kubernetes) ignores the hosts.toml files until it holds these lines, and no registry.mirrors or registry.configs; then restart containerd. ctr reads them with --hosts-dir $hosts_dir."
			cri_toml | grep -v '^#' >&2
			return 0
		fi
		{
			cat "$R$cc_file"
			echo
			cri_toml
		} >"$tmp/config.toml"
	fi
	if put "$cc_file" 0644 <"$tmp/config.toml"; then changed=true; fi
}

# containerd_mirror writes a hosts.toml for each registry.
containerd_mirror() {
	cri_config
	for reg in $registries; do
		# containerd looks for host:port under host_port_ first. _default
		# serves every registry without a directory of its own, and names
		# no server: the registry of the image serves if the mirror fails.
		case $reg in
		_default) server='' what='any registry without a directory of its own' ;;
		docker.io) server='server = "https://registry-1.docker.io"' what=$reg ;;
		*) server="server = \"https://$reg\"" what=$reg ;;
		esac
		case $reg in
		*:[0-9]*) reg_dir=${reg%:*}_${reg##*:}_ ;;
		*) reg_dir=$reg ;;
		esac
		{
			cat <<EOF
# Written by regproxy's $prog: containerd pulls images of
# $what
# through regproxy's mirror, and from the registry itself if that fails.
EOF
			[ -z "$server" ] || printf '%s\n' "$server"
			printf '\n[host."%s"]\n  capabilities = ["pull", "resolve"]\n' "$mirror"
		} >"$tmp/hosts.toml"
		put "$hosts_dir/$reg_dir/hosts.toml" 0644 <"$tmp/hosts.toml" || :
	done
}

main() {
	setup "$@"
	if [ -n "$mirror" ]; then
		containerd_mirror
	else
		proxy_dropin containerd
	fi
	restart containerd
}

main "$@"
