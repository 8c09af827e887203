# Every runnable thing is a target; `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

.PHONY: help build run test

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

build: ## Build everything (debug)
	@scripts/lib.sh 2>/dev/null; . scripts/lib.sh && ensure_build_deps && swift build

run: ## Build and run evserver on :3000 (starts a private redis-server if none answers)
	@scripts/run.sh

test: ## Start a private redis-server on a free port and run the test suite
	@scripts/test.sh
