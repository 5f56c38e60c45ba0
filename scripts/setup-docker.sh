#!/bin/sh
# setup-docker.sh points dockerd on this node at regproxy. Run it with
# --help for what it does and takes. The code it shares with the other
# setup scripts is in setup-lib.sh.
set -eu
prog=setup-docker.sh client=docker mirror_supported=true
restart_note=' (its containers stop, unless daemon.json sets live-restore)'
# shellcheck source-path=SCRIPTDIR
# shellcheck source=setup-lib.sh
. "$(dirname "$0")/setup-lib.sh"

client_usage() {
	cat <<'EOF'
Points dockerd at regproxy. Run it as root; running it again is safe.
EOF
	usage_ca_step
	cat <<'EOF'
 2. Writes /etc/systemd/system/docker.service.d/http-proxy.conf, which sets
    HTTPS_PROXY and NO_PROXY for dockerd. With --mirror instead: sets
    "registry-mirrors" in /etc/docker/daemon.json to the mirror, keeping the
    file's other keys as they are. dockerd mirrors only Docker Hub.
 3. Restarts docker if it runs and step 1 or 2 changed a file: dockerd reads
    both only at start. Its containers stop, unless daemon.json sets
    "live-restore".
EOF
}

# daemon_json puts into $tmp/daemon.json what daemon.json is to hold: the
# file as it is, with "registry-mirrors" set to the mirror. It runs before
# anything changes, so that a daemon.json it cannot edit changes nothing.
daemon_json() {
	if [ -f "$R/etc/docker/daemon.json" ]; then
		set_json_key "$R/etc/docker/daemon.json" registry-mirrors "[\"$mirror\"]" >"$tmp/daemon.json" ||
			die "/etc/docker/daemon.json: cannot read it as one JSON object; set \"registry-mirrors\": [\"$mirror\"] in it by hand"
	else
		printf '{\n  "registry-mirrors": ["%s"]\n}\n' "$mirror" >"$tmp/daemon.json"
	fi
}

# set_json_key FILE KEY VALUE prints FILE, a JSON object, with its
# top-level KEY set to VALUE (JSON text), and fails if FILE is not one
# object.
#
# Why awk: a Debian node has neither python3 nor jq unless something pulled
# them in (docker.io does not), and editing JSON with sed would break on
# the first nested object. awk is always there (mawk is required). This
# awk scans the file as JSON tokens, tracking strings (with escapes) and
# nesting, so it finds the top-level key exactly, replaces its value or
# adds it as the first member, and leaves every other byte as it was.
set_json_key() {
	awk -v key="\"$2\"" -v value="$3" '
	function fail() { bad = 1; exit 1 }
	{ text = text $0 "\n" }
	END {
		if (bad) exit 1
		n = length(text); depth = 0; instr = 0; esc = 0
		wantkey = 0; iskey = 0; await = 0; invalue = 0
		for (i = 1; i <= n; i++) {
			c = substr(text, i, 1)
			if (instr) {
				if (esc) esc = 0
				else if (c == "\\") esc = 1
				else if (c == "\"") {
					instr = 0; last = i
					if (iskey) { k = substr(text, kstart, i - kstart + 1); iskey = 0 }
				}
				continue
			}
			if (c ~ /[ \t\r\n]/) continue
			if (closed) fail()
			if (depth == 0) {
				if (c != "{") fail()
				open = i; depth = 1; wantkey = 1; last = i
				continue
			}
			if (await) { vstart = i; await = 0; invalue = 1 }
			if (invalue && depth == 1 && (c == "," || c == "}")) { vend = last; invalue = 0 }
			if (c == "\"") {
				instr = 1
				if (depth == 1 && wantkey) { iskey = 1; kstart = i; wantkey = 0; members++ }
			} else if (c == ":" && depth == 1) {
				if (k == key && !vstart) await = 1
			} else if (c == "," && depth == 1) {
				wantkey = 1
			} else if (c == "{" || c == "[") {
				depth++
			} else if (c == "}" || c == "]") {
				if (--depth == 0) closed = i
			}
			last = i
		}
		if (!closed || instr) fail()
		if (vstart)
			printf "%s%s%s", substr(text, 1, vstart - 1), value, substr(text, vend + 1)
		else if (!members)
			printf "%s\n  %s: %s\n%s", substr(text, 1, open), key, value, substr(text, closed)
		else {
			rest = substr(text, open + 1)
			# Keep the layout of the file; give a one-line object a new line.
			if (rest !~ /^[ \t]*\r?\n/) { sub(/^[ \t]+/, "", rest); rest = "\n  " rest }
			printf "%s\n  %s: %s,%s", substr(text, 1, open), key, value, rest
		}
	}' "$1"
}

main() {
	setup_args "$@"
	[ -z "$mirror" ] || daemon_json
	setup_ca
	if [ -z "$mirror" ]; then
		proxy_dropin docker
	elif put /etc/docker/daemon.json 0644 <"$tmp/daemon.json"; then
		changed=true
	fi
	restart docker
}

main "$@"
