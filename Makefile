# VERSION is stamped into the binary; a clone without tags or commits says "dev".
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN := bin/regproxy

.PHONY: build run test test-deps bench lint clean

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

bench:
	go run ./cmd/regproxy-bench
	go test -run '^$$' -bench . -benchmem ./...

lint:
	@files=$$(gofmt -l .); if [ -n "$$files" ]; then \
		echo "gofmt -w needed on:" >&2; echo "$$files" >&2; exit 1; fi
	go vet ./...

# clean keeps ./data: it is the cache, not a build product.
clean:
	rm -rf bin
