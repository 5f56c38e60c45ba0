# VERSION is stamped into the binary; a clone without tags or commits says "dev".
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN := bin/regproxy
# IMAGE is what make docker tags the container image as.
IMAGE ?= regproxy:$(VERSION)

.PHONY: build run test test-deps fuzz bench lint docker clean

# build makes the static binary (no cgo, so no libc) that the container
# image holds too: the Dockerfile runs make build. TestImageBinary builds
# and checks it.
build:
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN) ./cmd/regproxy

run: build
	./$(BIN) serve --data-dir ./data --listen 127.0.0.1:3128

test-deps:
	scripts/install-test-deps.sh

# The integration tests drive real clients (skopeo), hence test-deps.
test: test-deps
	go mod download
	@$(MAKE) --no-print-directory lint
	go test -race -count=1 -timeout 20m ./...
	@$(MAKE) --no-print-directory fuzz FUZZTIME=10s

# FUZZ lists every fuzz target as package:Name. go test -fuzz takes one
# target of one package at a time, so make fuzz runs them one after the
# other, each for FUZZTIME; FUZZFLAGS adds flags (e.g. -parallel=1).
FUZZ := \
	./cachestore:FuzzValidKey \
	./cmd/regproxy:FuzzParseResolve \
	./cmd/regproxy:FuzzParseTTLRule \
	./fill:FuzzServeRange \
	./proxy:FuzzParsePath \
	./proxy:FuzzParseObjectPath \
	./proxy:FuzzParseDigest \
	./proxy:FuzzParseManifest \
	./proxy:FuzzCheckRegistries \
	./proxy:FuzzLoadTag \
	./proxy:FuzzTagRecordKey \
	./proxy:FuzzCheckName \
	./proxy:FuzzAnchoredTag \
	./proxy:FuzzDescribeRepoPath \
	./proxy:FuzzParseMirror \
	./proxy:FuzzParseFastRequest \
	./upstreamauth:FuzzParseFlag \
	./upstreamauth:FuzzParseAuthRegistries \
	./upstreamauth:FuzzLoadDockerConfig \
	./upstreamauth:FuzzDockerConfigSecret \
	./upstreamauth:FuzzParseChallenges
FUZZTIME ?= 60s
FUZZFLAGS ?=

# A pattern that matches no target would fuzz nothing and pass, hence the grep.
fuzz:
	@for t in $(FUZZ); do \
		pkg=$${t%%:*}; name=$${t#*:}; \
		grep -q "^func $$name(" $$pkg/*_test.go || { echo "fuzz: no $$name in $$pkg" >&2; exit 1; }; \
		echo "go test -run '^\$$' -fuzz '^$$name\$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS) $$pkg"; \
		go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $(FUZZFLAGS) $$pkg || exit 1; \
	done

# bench runs cmd/regproxy-bench (scenarios a-g, g against Azurite, about 8 minutes; BENCHFLAGS
# adds flags such as -soak 10m, -quick or -run cd), then the Go
# micro-benchmarks. It needs no root. Without nginx there are no nginx peer
# rows, and the report says so; make test-deps installs Debian's nginx-light.
BENCHFLAGS ?=
bench:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || \
		echo "bench: note: nginx is not installed, so the nginx peer is left out (make test-deps installs nginx-light)" >&2
	go run ./cmd/regproxy-bench $(BENCHFLAGS)
	go test -run '^$$' -bench . -benchmem ./...

# lint also runs shellcheck on every shell script of scripts/ and
# examples/ (make test-deps installs shellcheck), following what each one
# sources (-x).
lint:
	@files=$$(gofmt -l .); if [ -n "$$files" ]; then \
		echo "gofmt -w needed on:" >&2; echo "$$files" >&2; exit 1; fi
	go vet ./...
	shellcheck -x $$(find scripts examples -name '*.sh' | sort)

# docker builds the container image (Dockerfile) as $(IMAGE). It pulls
# golang and distroless base images, so it needs a registry; make test
# checks the Dockerfile and the binary it builds instead.
docker:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

# clean keeps ./data: it is the cache, not a build product.
clean:
	rm -rf bin
