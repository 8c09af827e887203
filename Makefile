# Every runnable thing is a target; `make help` lists them. The scripts behind them live in scripts/.
.DEFAULT_GOAL := help
SHELL := /bin/bash

.PHONY: help build release run test cluster

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

build: ## Build everything (debug), installing libevent/hiredis/redis if missing
	@. scripts/lib.sh && ensure_build_deps && swift build

release: ## Build the evserver binary in release mode
	@. scripts/lib.sh && ensure_build_deps && swift build -c release --product evserver

run: ## Run evserver on :3000 (starts a private redis-server if none answers; ARGS="--rolling true")
	@scripts/run.sh

test: ## Start a private redis-server on a free port and run the whole test suite
	@scripts/test.sh

cluster: ## Redis + three evserver instances + haproxy on :8080, on loopback (Ctrl-C stops all)
	@scripts/cluster.sh
