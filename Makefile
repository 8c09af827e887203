# Every runnable thing is a target; `make help` lists them. The scripts behind them live in scripts/.
.DEFAULT_GOAL := help
SHELL := /bin/bash

.PHONY: help build release run test tsan cluster hot chaos chaos-latency redis-cluster cluster-chaos redis-sentinel sentinel-chaos fuzz fuzz-smoke \
	bench bench-smoke browser-test package-check monitoring-check

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

build: ## Build everything (debug), installing libevent/hiredis/redis if missing
	@. scripts/lib.sh && ensure_build_deps && swift build

release: ## Build the evserver binary in release mode
	@. scripts/lib.sh && ensure_build_deps && swift build -c release --product evserver

run: ## Run evserver on :3000 (starts a private redis-server if none answers; ARGS="--rolling true")
	@scripts/run.sh

test: ## Start a private redis-server on a free port and run the whole test suite, then the package check
	@scripts/test.sh

package-check: ## Build a new package against this one's HEAD from the README's lines and run its tutorial
	@scripts/package-check.sh

tsan: ## The multi-loop tests under ThreadSanitizer (separate build in .build-tsan; a race fails)
	@scripts/tsan.sh

cluster: ## Redis + three evserver instances + haproxy on :8080, on loopback (CLUSTER_MONITORING=1: Prometheus on :9090 too)
	@scripts/cluster.sh

monitoring-check: ## The cluster with Prometheus scraping deploy/prometheus.yml: targets up, requests counted exactly
	@scripts/monitoring-check.sh

hot: ## 64 connections on one session through haproxy and three instances: every request 200, the counter exact
	@scripts/hot.sh

chaos: ## Redis kill -9 / CLIENT PAUSE / CLIENT KILL under load against one evserver; per-phase table
	@scripts/chaos.sh

chaos-latency: ## Every Redis reply delayed 0-900 ms: session requests answered within deadline + 100 ms
	@scripts/chaos.sh latency

redis-cluster: ## Redis Cluster on loopback: 6 redis-server (3 primaries + 3 replicas) on :7000-7005 (Ctrl-C stops all)
	@scripts/redis-cluster.sh

cluster-chaos: ## evserver on a Redis Cluster under load: kill a primary, then reshard; status counts per phase
	@scripts/cluster-chaos.sh

fuzz: ## libFuzzer over cookies, signatures, percent-decoding, JSON, sessions (FUZZ_TIME=60 s, or RUNS=N)
	@scripts/fuzz.sh $(if $(RUNS),-runs=$(RUNS),$(or $(FUZZ_TIME),60))

fuzz-smoke: ## Replay the fuzz corpus plus 300k new inputs (about 15 s after the build)
	@scripts/fuzz.sh -runs=300000 -seed=1

bench: ## Benchmark evserver (release) against the C reference server -> bench-results/latest.md
	@scripts/bench.sh

bench-smoke: ## Check the benchmark harness quickly (1 s per scenario, small memory checks)
	@scripts/bench.sh --smoke

redis-sentinel: ## A Redis primary, its replica and three sentinels on loopback; prints the evserver flags
	@scripts/redis-sentinel.sh

sentinel-chaos: ## evserver on Redis Sentinel under load: SENTINEL FAILOVER, then kill -9 the primary; per-phase table
	@scripts/sentinel-chaos.sh

browser-test: ## Drive /demo through haproxy in headless Chromium (installs chromium + selenium); screenshots in out/
	@scripts/browser-test.sh
