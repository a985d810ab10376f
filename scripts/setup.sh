#!/usr/bin/env bash
# Installs everything Sluice needs on a fresh machine of this kind; fast when already done.
# Only apt, crates.io and rustup components are used.
set -euo pipefail

say() { echo "setup: $*"; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

APT_PACKAGES=(llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev
  iproute2 ethtool iputils-ping tcpdump iperf3 netsniff-ng socat bpftool curl python3)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# nft: the kernel baselines of `sluice-bench` (e2e stateful filtering, nat masquerade, lb numgen).
command -v nft >/dev/null || missing+=(nftables)
if [ ${#missing[@]} -gt 0 ]; then
  say "apt installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "apt packages present"
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "setup: the 'nightly' toolchain is missing; it is preinstalled on this machine kind" >&2
  exit 1
fi
if rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  say "rust-src (nightly) present"
else
  say "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi

if command -v bpf-linker >/dev/null && bpf-linker --version | grep -q '0.13.0'; then
  say "bpf-linker $(bpf-linker --version | awk '{print $2}') present"
else
  say "building bpf-linker 0.13.0 against LLVM 22 (about a minute)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked \
    --no-default-features --features llvm-22
fi

# bpffs outside /sys: `ip netns exec` remounts /sys, so pins under /sys/fs/bpf die with it.
BPFFS=${SLUICE_BPFFS:-/run/sluice/bpffs}
if mountpoint -q "$BPFFS" 2>/dev/null; then
  say "bpffs mounted at $BPFFS"
else
  $SUDO mkdir -p "$BPFFS"
  $SUDO mount -t bpf bpf "$BPFFS"
  say "mounted bpffs at $BPFFS"
fi
