# The regproxy image: the static binary of make build on distroless (no
# shell, no libc), run as a numeric non-root user, writing nothing but the
# data volume, so that it runs with a read-only root filesystem
# (docker run --read-only, Kubernetes readOnlyRootFilesystem). make docker
# builds it; cmd/regproxy/image_test.go checks this file and the binary.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# make build: CGO_ENABLED=0 go build -trimpath, a static binary.
RUN make build VERSION="${VERSION}" BIN=/out/regproxy \
 && mkdir /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/regproxy /regproxy
# --chown also owns the new /var/lib/regproxy, so a fresh volume is writable.
COPY --from=build --chown=65532:65532 /out/data /var/lib/regproxy
# Numeric, so that Kubernetes' runAsNonRoot can check it: distroless's nonroot.
USER 65532:65532
# The CA (ca/) and the cache (cache/), or with --storage azure the spool.
VOLUME /var/lib/regproxy
EXPOSE 3128
# distroless has no shell, curl or wget: the binary asks its own /healthz,
# at the port of REGPROXY_LISTEN if that is set. Its --timeout is shorter
# than Docker's, so that a slow answer is reported, not killed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/regproxy", "healthcheck", "--timeout", "4s"]
ENTRYPOINT ["/regproxy", "serve", "--data-dir", "/var/lib/regproxy"]
