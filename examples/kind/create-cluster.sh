#!/bin/sh
# create-cluster.sh [IMAGE] creates a kind cluster (kind.yaml) whose nodes
# pull through regproxy's registry mirror, from a container named regproxy
# (IMAGE, default regproxy:latest, as make docker IMAGE=regproxy:latest
# builds it) that keeps its CA and cache in the volume regproxy-data.
# KIND_CLUSTER_NAME names the cluster, as kind reads it. Running it again
# reuses the container.
set -eu
cd "$(dirname "$0")"
image=${1:-regproxy:latest}

# 1. regproxy, with its mirror port on 5000 speaking TLS for the name the
#    nodes use. On Docker's default network first: kind's appears with the
#    cluster.
if ! docker container inspect regproxy >/dev/null 2>&1; then
	docker run -d --name regproxy --restart unless-stopped \
		-v regproxy-data:/var/lib/regproxy \
		-e REGPROXY_MIRROR_LISTEN=:5000 \
		-e REGPROXY_MIRROR_HOSTNAME=regproxy \
		"$image" >/dev/null
fi
tries=0
until docker exec regproxy /regproxy healthcheck; do
	tries=$((tries + 1))
	if [ "$tries" -ge 30 ]; then
		echo "create-cluster.sh: regproxy is not healthy; see docker logs regproxy" >&2
		exit 1
	fi
	sleep 1
done

# 2. Its CA, which the nodes mount (kind.yaml). Read from the container
#    itself, so there is no fingerprint to check.
docker exec regproxy /regproxy ca print >regproxy-ca.crt.new
mv regproxy-ca.crt.new regproxy-ca.crt

# 3. The cluster, then regproxy on its network. Pulls before that fall back
#    to the registries themselves.
kind create cluster --config kind.yaml
if ! docker network inspect kind --format '{{range .Containers}}{{.Name}} {{end}}' | grep -qw regproxy; then
	docker network connect kind regproxy
fi
echo "create-cluster.sh: nodes pull through regproxy:5000 (docker logs regproxy shows each pull)"
