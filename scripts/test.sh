#!/usr/bin/env bash
# Runs every test tier. The README's test command; .ci/run calls it with
# SLUICE_REQUIRE_PRIVILEGED=1 so a privileged tier that cannot run fails instead of skipping.
#   tier 1  unit tests                       (no privileges)
#   tier 2  packet fixtures                  (BPF_PROG_TEST_RUN)        dataplane/tests/fixtures.rs
#   tier 3  network-namespace integration    (netns, veth, sluiced)     dataplane/tests/{netns,daemon}.rs
#   tier 4  verifier load + instruction count                           dataplane/tests/verifier.rs
#   plus    the benchmark harness in --quick mode (proves it runs; asserts no timing)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if [ "$(id -u)" -ne 0 ]; then
  echo "!!!!! not root: privileged tiers will skip loudly (or fail with SLUICE_REQUIRE_PRIVILEGED=1)" >&2
fi

# Plain `cargo test` at the root covers the default members: every crate but the eBPF one,
# which only builds for bpfel-unknown-none (dataplane/build.rs builds it).
echo "== tier 1: unit tests"
cargo test --lib --bins

echo "== tiers 2-4 and the bench harness: every integration test target"
cargo test --test '*'

echo "== tier 4 report: verifier instruction counts"
cat target/verifier-report.txt
if [ -f target/fixture-report.txt ]; then
  echo "== tier 2 report"
  cat target/fixture-report.txt
fi
