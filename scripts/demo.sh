#!/usr/bin/env bash
# The main command: set up what is missing, build, bring up a namespace lab, run sluiced in
# it, send real traffic between two VMs and show the XDP counters moving. Everything lives in
# namespaces this script creates and removes on exit, Ctrl-C included; the machine's own
# interfaces (eth0) and the root namespace's routes are never touched.
#
#      vm1 10.0.0.1                          vm2 10.0.0.2          VM namespaces
#          | veth                                | veth
#   [xdp_vm] <lab>-vm1 ---- <lab>-br ---- <lab>-vm2 [xdp_vm]       host namespace "h"
#                           sluiced (pins under /run/sluice/bpffs/<lab>-h)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (network namespaces and XDP need it)" >&2
  exit 1
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "setup"
bash scripts/setup.sh

step "build (release)"
cargo build --release
SLUICED=$PWD/target/release/sluiced
SLUICECTL=$PWD/target/release/sluicectl

source scripts/lab.sh
lab_init

step "lab $LAB: host namespace h with a bridge; VMs vm1 and vm2 on it"
lab_host h
lab_bridge h
lab_vm h vm1 10.0.0.1/24 02:00:00:00:00:01
lab_vm h vm2 10.0.0.2/24 02:00:00:00:00:02

step "sluiced in h, xdp_vm on $LAB-vm1 and $LAB-vm2"
lab_daemon h "$SLUICED" "$LAB-vm1" "$LAB-vm2"
ctl() { "$SLUICECTL" --api "$LAB_API" "$@"; }
ctl status

step "counters before traffic"
ctl stats

step "traffic: ping vm1 -> vm2"
lab_run vm1 ping -c 5 -i 0.2 10.0.0.2

DATAGRAMS=5000
step "traffic: $DATAGRAMS UDP datagrams of 64 bytes, vm1 -> vm2:5001 (socat)"
lab_spawn vm2 socat -u UDP-RECV:5001 OPEN:"$LAB_RUN/received",creat,trunc
sleep 0.5
# -b 64: socat reads the pipe 64 bytes at a time and sends each read as one datagram.
head -c $((DATAGRAMS * 64)) /dev/zero | lab_exec vm1 socat -b 64 -u - UDP-SENDTO:10.0.0.2:5001
sleep 0.5
echo "vm2 received $(( $(stat -c %s "$LAB_RUN/received") / 64 )) datagrams"

step "counters after traffic (pass_ipv4: echo requests, replies and datagrams; pass_arp: neighbour resolution)"
ctl stats

step "done; removing the lab"
