FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /regproxy ./cmd/regproxy \
 && mkdir /cache

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /regproxy /regproxy
# --chown also owns the new /var/lib/regproxy, so a fresh volume is writable.
COPY --from=build --chown=65532:65532 /cache /var/lib/regproxy
USER 65532:65532
VOLUME /var/lib/regproxy
EXPOSE 3128
ENTRYPOINT ["/regproxy", "serve", "--data-dir", "/var/lib/regproxy"]
