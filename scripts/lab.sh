# Shell helpers for network-namespace labs: the scripts' twin of dataplane/src/lab.
# Source this file, call lab_init, build with lab_host / lab_bridge / lab_vm, run things with
# lab_exec / lab_daemon. lab_init arms a trap that removes everything on exit, Ctrl-C
# included. Every interface is created directly inside a lab namespace (ip -n): nothing here
# touches the root namespace's interfaces or routes.

LAB_BPFFS=/run/sluice/bpffs
LAB_NAMESPACES=()
LAB_PIDS=()
LAB_PIN_DIRS=()
LAB_SLUICED=""

lab_say() { echo "lab: $*" >&2; }

# Claims a free name sl<4 hex digits> (its run dir is the lock) and arms the cleanup trap.
lab_init() {
  mkdir -p /run/sluice
  LAB=""
  local _
  for _ in $(seq 32); do
    local name
    name=sl$(printf '%04x' $(( (RANDOM << 2 ^ $$) & 0xffff )))
    if mkdir "/run/sluice/$name" 2>/dev/null; then LAB=$name; break; fi
  done
  [ -n "$LAB" ] || { lab_say "no free lab name under /run/sluice"; return 1; }
  LAB_RUN=/run/sluice/$LAB
  echo $$ > "$LAB_RUN/owner"   # lets the Rust lab sweep this one if we die by SIGKILL
  trap lab_down EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # `ip netns exec` remounts /sys, so pins live on a bpffs outside it.
  mountpoint -q "$LAB_BPFFS" || { mkdir -p "$LAB_BPFFS"; mount -t bpf bpf "$LAB_BPFFS"; }
}

# lab_host NAME: namespace <lab>-NAME with loopback up.
lab_host() {
  local ns=$LAB-$1
  ip netns add "$ns"
  LAB_NAMESPACES+=("$ns")
  ip -n "$ns" link set lo up
}

# lab_bridge HOST: bridge <lab>-br in HOST, up.
lab_bridge() {
  ip -n "$LAB-$1" link add "$LAB-br" type bridge
  ip -n "$LAB-$1" link set "$LAB-br" up
}

# lab_vm HOST VM ADDR/LEN MAC: namespace VM wired to HOST's bridge by a veth pair.
# Host side: <lab>-VM (where xdp_vm attaches). VM side: <lab>-VMn, with ADDR and MAC.
lab_vm() {
  local host=$LAB-$1 vm=$LAB-$2 addr=$3 mac=$4
  local host_if=$LAB-$2 vm_if=$LAB-${2}n
  lab_host "$2"
  ip -n "$host" link add "$host_if" type veth peer name "$vm_if" netns "$vm"
  ip -n "$vm" link set "$vm_if" address "$mac"
  ip -n "$vm" addr add "$addr" dev "$vm_if"
  ip -n "$vm" link set "$vm_if" up
  # GRO gives the veth NAPI: without it, XDP_REDIRECT into this VM would deliver nothing.
  ip netns exec "$vm" ethtool -K "$vm_if" gro on >/dev/null
  ip -n "$host" link set "$host_if" master "$LAB-br" up
}

# lab_exec HOST CMD...: runs CMD inside HOST's namespace.
lab_exec() {
  local ns=$LAB-$1
  shift
  ip netns exec "$ns" "$@"
}

# lab_run HOST CMD...: lab_exec in the foreground, except that Ctrl-C aborts the script even
# when CMD catches SIGINT and exits 0 (ping does; bash would then carry on): a trapped signal
# interrupts `wait`.
lab_run() {
  lab_exec "$@" &
  wait $!
}

# lab_spawn HOST CMD...: like lab_exec, in the background; the process is killed on exit.
lab_spawn() {
  lab_exec "$@" &
  LAB_PIDS+=($!)
}

# ---- overlay labs: the twin of dataplane/src/lab/overlay.rs (read its docs for why) ----

# lab_no_ipv6 HOST: no IPv6 on interfaces created in HOST from now on (keeps RS/MLD chatter
# out of counters and captures).
lab_no_ipv6() {
  ip netns exec "$LAB-$1" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 \
    net.ipv6.conf.default.disable_ipv6=1
}

# lab_fabric: the underlay, namespace <lab>-fabric with bridge <lab>-br (created once).
lab_fabric() {
  [ -n "${LAB_FABRIC:-}" ] && return 0
  lab_host fabric
  lab_no_ipv6 fabric
  ip -n "$LAB-fabric" link add "$LAB-br" type bridge
  ip -n "$LAB-fabric" link set "$LAB-br" up
  LAB_FABRIC=1
}

# lab_underlay_host HOST ADDR/LEN: host namespace HOST on the fabric. Its end, <lab>-ul, holds
# ADDR (the VTEP) and gets xdp_underlay; the fabric end is <lab>-HOST on the bridge.
lab_underlay_host() {
  local host=$1 addr=$2
  lab_fabric
  lab_host "$host"
  lab_no_ipv6 "$host"
  ip -n "$LAB-$host" link add "$LAB-ul" type veth peer name "$LAB-$host" netns "$LAB-fabric"
  ip -n "$LAB-fabric" link set "$LAB-$host" master "$LAB-br" mtu 1500 up
  # Encapsulated frames are XDP_REDIRECTed into <lab>-ul: its peer must run NAPI.
  ip netns exec "$LAB-fabric" ethtool -K "$LAB-$host" gro on >/dev/null
  ip -n "$LAB-$host" addr add "$addr" dev "$LAB-ul"
  ip -n "$LAB-$host" link set "$LAB-ul" mtu 1500 up
}

# lab_overlay_vm HOST VM ADDR/LEN MAC: VM namespace routed by HOST's XDP (no bridge). VM side
# <lab>-VMn: ADDR, MAC, MTU 1450 (1500 minus VXLAN's 50), default route via the subnet's first
# address, TX checksum offload off and an XDP pass program (XDP_REDIRECT and XDP_TX into a veth
# deliver only then). Host side <lab>-VM: no address, MTU 1450; xdp_vm attaches there.
lab_overlay_vm() {
  local host=$LAB-$1 vm=$2 addr=$3 mac=$4
  local host_if=$LAB-$2 vm_if=$LAB-${2}n gw
  gw=$(python3 -c 'import ipaddress, sys; print(next(ipaddress.ip_interface(sys.argv[1]).network.hosts()))' "$addr")
  lab_host "$vm"
  lab_no_ipv6 "$vm"
  ip -n "$host" link add "$host_if" type veth peer name "$vm_if" netns "$LAB-$vm"
  ip -n "$host" link set "$host_if" mtu 1450 up
  ip -n "$LAB-$vm" link set "$vm_if" address "$mac" mtu 1450
  ip -n "$LAB-$vm" addr add "$addr" dev "$vm_if"
  ip -n "$LAB-$vm" link set "$vm_if" up
  ip -n "$LAB-$vm" route add default via "$gw" dev "$vm_if"
  ip netns exec "$LAB-$vm" ethtool -K "$vm_if" tx off >/dev/null
  lab_xdp_pass "$vm" "$vm_if"
}

# The lab's pass-everything XDP program (r0 = XDP_PASS; exit), loaded with bpf(2), attached in
# driver mode by a BPF link and pinned (argv: ifname pin-path). Same as dataplane/src/lab/xdp.rs.
LAB_XDP_PASS_PY='
import ctypes, os, socket, struct, sys
ifname, pin = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def bpf(cmd, attr, what):
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    r = libc.syscall(321, cmd, buf, len(attr))  # SYS_bpf on x86_64
    if r < 0:
        sys.exit("lab_xdp_pass %s: %s: %s" % (ifname, what, os.strerror(ctypes.get_errno())))
    return r
insns = ctypes.create_string_buffer(struct.pack("<BBhiBBhi", 0xb7, 0, 0, 2, 0x95, 0, 0, 0), 16)
lic = ctypes.create_string_buffer(b"GPL")
attr = bytearray(128)
struct.pack_into("<IIQQ", attr, 0, 6, 2, ctypes.addressof(insns), ctypes.addressof(lic))
attr[48:60] = b"lab_xdp_pass"
struct.pack_into("<I", attr, 68, 37)
prog = bpf(5, attr, "loading the program")
attr = bytearray(64)
struct.pack_into("<IIII", attr, 0, prog, socket.if_nametoindex(ifname), 37, 4)
link = bpf(28, attr, "attaching it in driver mode")
path = ctypes.create_string_buffer(pin.encode())
attr = bytearray(32)
struct.pack_into("<QI", attr, 0, ctypes.addressof(path), link)
bpf(6, attr, "pinning its link at " + pin)
'

# lab_xdp_pass HOST IFACE: the pass program on IFACE in HOST; unpinned by lab_down.
lab_xdp_pass() {
  local dir=$LAB_BPFFS/$LAB-$1
  mkdir -p "$dir/links"
  LAB_PIN_DIRS+=("$dir")
  ip netns exec "$LAB-$1" python3 -c "$LAB_XDP_PASS_PY" "$2" "$dir/links/$2"
}

# lab_daemon HOST SLUICED IFACE[:ROLE]...: runs sluiced in HOST with each IFACE attached in ROLE
# (vm, the default, or underlay) and waits until it is ready. Sets LAB_API (for sluicectl
# --api) and LAB_PIN_DIR.
lab_daemon() {
  local host=$1 sluiced=$2
  shift 2
  local cfg=$LAB_RUN/$host.yaml log=$LAB_RUN/$host.log
  LAB_SLUICED=$sluiced
  LAB_PIN_DIR=$LAB_BPFFS/$LAB-$host
  LAB_API=unix:$LAB_RUN/$host.sock
  {
    echo "pin_dir: $LAB_PIN_DIR"
    echo "api: $LAB_API"
    echo "on_exit: keep"
    echo "interfaces:"
    local iface
    for iface in "$@"; do
      local name=${iface%%:*} role=vm
      [ "$name" != "$iface" ] && role=${iface#*:}
      echo "  - { name: $name, role: $role }"
    done
  } > "$cfg"
  LAB_PIN_DIRS+=("$LAB_PIN_DIR")
  # Its own session: Ctrl-C reaches the script, and the daemon stops by lab_down's SIGTERM.
  setsid ip netns exec "$LAB-$host" "$sluiced" --config "$cfg" >"$log" 2>&1 &
  local pid=$!
  LAB_PIDS+=("$pid")
  local _
  for _ in $(seq 600); do
    grep -q "sluiced: ready" "$log" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  lab_say "sluiced did not become ready; its log ($log):"
  cat "$log" >&2
  return 1
}

# Stops what the lab started (by PID), unpins, deletes its namespaces. Runs from the trap.
lab_down() {
  local status=$?
  trap - EXIT INT TERM
  set +e
  local pid ns dir _
  for pid in "${LAB_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${LAB_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  for dir in "${LAB_PIN_DIRS[@]}"; do
    [ -n "$LAB_SLUICED" ] && "$LAB_SLUICED" teardown --pin-dir "$dir" >/dev/null 2>&1
    rm -rf "$dir"
  done
  for ns in "${LAB_NAMESPACES[@]}"; do
    # Anything still inside (a grandchild) was started by this lab too.
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    ip netns del "$ns"
  done
  [ -n "${LAB_RUN:-}" ] && rm -rf "$LAB_RUN"
  [ -n "${LAB:-}" ] && lab_say "removed lab $LAB (namespaces, veths, bridge, pins)"
  exit "$status"
}

# lab_sweep [SLUICED]: removes labs whose owner process is gone (a test or demo killed before
# it could clean up): kills what runs in their namespaces, unpins, deletes the namespaces.
# The twin of the Rust lab's sweep; labs with a live owner are left alone.
lab_sweep() {
  local sluiced=${1:-} dir name owner ns pids pin
  for dir in /run/sluice/sl[0-9a-f][0-9a-f][0-9a-f][0-9a-f]; do
    [ -f "$dir/owner" ] || continue
    owner=$(cat "$dir/owner" 2>/dev/null) || continue
    # Alive, and not a zombie nobody reaped yet.
    if kill -0 "$owner" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$owner/stat" 2>/dev/null)" != Z ]; then
      continue
    fi
    name=${dir##*/}
    lab_say "removing leftovers of lab $name (owner pid $owner is gone)"
    for ns in $(ip netns list | awk '{print $1}' | grep "^$name-" || true); do
      pids=$(ip netns pids "$ns" 2>/dev/null)
      [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
      ip netns del "$ns" 2>/dev/null
    done
    for pin in "$LAB_BPFFS/$name-"*; do
      [ -d "$pin" ] || continue
      [ -n "$sluiced" ] && "$sluiced" teardown --pin-dir "$pin" >/dev/null 2>&1
      rm -rf "$pin"
    done
    rm -rf "$dir"
  done
  return 0
}

# Run as a command (not sourced).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  cd "$(dirname "$0")/.."
  if [ "$(id -u)" -ne 0 ]; then
    echo "lab: run as root (network namespaces and XDP need it)" >&2
    exit 1
  fi
  case "${1:-}" in
    up)
      file=${2:-lab/default.yaml}
      [ -f "$file" ] || { echo "lab: no lab file $file" >&2; exit 1; }
      bash scripts/setup.sh
      cargo build --release
      cargo test --release -p sluice-dataplane --test overlay_api --no-run
      export SLUICE_LAB_FILE=$(realpath "$file")
      trap 'lab_sweep "$PWD/target/release/sluiced"' EXIT
      cargo test --release -p sluice-dataplane --test overlay_api -q -- \
        --ignored --exact lab_up --nocapture --test-threads 1
      ;;
    sweep)
      lab_sweep "$PWD/target/release/sluiced"
      ;;
    *)
      echo "usage: scripts/lab.sh up [FILE] | sweep   (or source it as a library)" >&2
      exit 2
      ;;
  esac
fi
