#!/usr/bin/env bash
# The main command: set up what is missing, build, bring up the default lab (lab/default.yaml)
# in network namespaces and show it working, then remove it.
#
#   fabric   a bridge in its own namespace: the underlay (172.31.0.0/24)
#   h1, h2   host namespaces, each running its own sluiced: h1 is the controller (REST API,
#            redb store) and h1's agent, h2 runs h2's agent against h1's API
#   VMs      a namespace per NIC, wired to its host by a veth; two tenants with identical
#            CIDRs (10.0.0.0/16) and identical VM addresses, spread over both hosts
#
# The topology is posted to the controller; the agents compile it into their XDP maps. The
# demo then sends pings and TCP across hosts in both tenants at once, captures every VM
# interface to show that neither tenant sees the other, adds and removes a more specific
# route and a security-group deny with sluicectl, gives both tenants the lab's Internet through
# NAT gateways (SNAT; the public server sees each tenant's own EIP) and publishes a3's web
# server by DNAT, and prints the XDP counters. The lab
# builder is the Rust one the namespace tests use (dataplane/src/lab/topology.rs), run as a
# test of dataplane/tests/overlay_api.rs.
#
#   scripts/demo.sh          run the demo and tear the lab down
#   scripts/demo.sh --hold   keep the lab up at the end (prints what to try), until Enter
#
# Everything lives in namespaces the demo creates and removes, Ctrl-C included (a lab left by
# a killed run is swept by the next one); the machine's own interfaces (eth0) and the root
# namespace's routes are never touched.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (network namespaces and XDP need it)" >&2
  exit 1
fi
case "${1:-}" in
  "") ;;
  --hold) export SLUICE_LAB_HOLD=1 ;;
  *) echo "usage: scripts/demo.sh [--hold]" >&2; exit 2 ;;
esac

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "setup"
bash scripts/setup.sh

step "build (release): sluiced, sluicectl and the lab"
cargo build --release
cargo test --release -p sluice-dataplane --test overlay_api --no-run

export SLUICECTL=$PWD/target/release/sluicectl
# A run cut short (Ctrl-C) leaves its lab to the next sweep; do it now.
source scripts/lab.sh
trap 'lab_sweep "$PWD/target/release/sluiced"' EXIT
cargo test --release -p sluice-dataplane --test overlay_api -q -- \
  --exact demo_default_lab --nocapture --test-threads 1
