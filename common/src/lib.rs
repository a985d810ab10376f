//! The kernel/user ABI of Sluice: every type, name and size that crosses the boundary
//! between the XDP programs (`ebpf/`) and userspace (`dataplane/`).
//!
//! Everything here is `#[repr(C)]` or a plain integer so both sides agree byte for byte;
//! each shared type has a compile-time size and alignment assert.
#![no_std]

pub mod bench;
pub mod conntrack;
pub mod lb;
pub mod nat;
pub mod sg;
pub mod stats;
pub mod vpc;

/// Map names, as declared in the eBPF object and pinned under the bpffs directory.
pub mod maps {
    /// Per-CPU array of [`crate::stats::Counter`], indexed by [`crate::stats::Reason`].
    pub const STATS: &str = "SLUICE_STATS";
    /// Array of [`crate::vpc::Port`] indexed by host-side ifindex. Renamed from the hash
    /// map `SLUICE_PORTS`, so a pinned map of the old type is never reused as this one.
    pub const PORTS: &str = "SLUICE_PORT_ARRAY";
    /// [`crate::vpc::Endpoint`] by (VNI, IP): where every NIC this host talks to lives.
    pub const ENDPOINTS: &str = "SLUICE_ENDPOINTS";
    /// LPM trie of [`crate::vpc::NextHop`] by (VNI, destination prefix).
    pub const ROUTES: &str = "SLUICE_ROUTES";
    /// [`crate::vpc::VniInfo`] by VNI: the VPCs present on this host.
    pub const VNIS: &str = "SLUICE_VNIS";
    /// One-slot array of [`crate::vpc::HostConfig`].
    pub const HOST: &str = "SLUICE_HOST";
    /// [`crate::vpc::UnderlayNeighbor`] by remote VTEP address: the agent's record of the
    /// MACs it copies into remote endpoints (`Endpoint::vtep_mac`).
    pub const UNDERLAY_NEIGHBORS: &str = "SLUICE_UNDERLAY";
    /// [`crate::vpc::ApplianceVtep`] by [`crate::vpc::ApplianceVtepKey`]: hosts whose
    /// appliance NICs may send any inner source address under a VNI.
    pub const APPLIANCE_VTEPS: &str = "SLUICE_APPLIANCE_VTEPS";
    /// Every map in the object; the daemon pins each under `<pin_dir>/maps/<name>`.
    pub const ALL: [&str; 33] = [
        STATS,
        PORTS,
        ENDPOINTS,
        ROUTES,
        VNIS,
        HOST,
        UNDERLAY_NEIGHBORS,
        APPLIANCE_VTEPS,
        crate::sg::maps::NICS,
        crate::sg::maps::POLICIES,
        crate::sg::maps::REMOTES,
        crate::sg::maps::SERVICES,
        crate::sg::maps::BLOCKLIST,
        crate::sg::maps::BLOCK_STATS,
        crate::sg::maps::CONFIG,
        crate::conntrack::maps::CONNTRACK,
        crate::conntrack::maps::CONFIG,
        crate::conntrack::maps::COUNT,
        crate::conntrack::maps::STATS,
        crate::conntrack::maps::SCRATCH,
        crate::nat::maps::CONFIG,
        crate::nat::maps::EIPS,
        crate::nat::maps::DNAT,
        crate::nat::maps::SOURCES,
        crate::nat::maps::BLOCKS,
        crate::nat::maps::OWNERS,
        crate::nat::maps::BINDINGS,
        crate::lb::maps::LISTENERS,
        crate::lb::maps::TABLES,
        crate::lb::maps::BACKENDS,
        crate::lb::maps::ACTIVE,
        crate::bench::maps::CONFIG,
        crate::bench::maps::FRAME,
    ];
}

/// Program names in the eBPF object.
pub mod programs {
    /// XDP entry for the host side of a VM's interface.
    pub const XDP_VM: &str = "xdp_vm";
    /// XDP entry for the host's underlay (fabric) interface.
    pub const XDP_UNDERLAY: &str = "xdp_underlay";
    /// An empty XDP program: the measuring floor for benchmarks.
    pub const XDP_FLOOR: &str = "xdp_floor";
    /// Benchmark only: `xdp_vm` / `xdp_underlay` that put the frame back after each run
    /// (`crate::bench`), so repeated test runs of a path that rewrites it measure that path.
    pub const XDP_BENCH_VM: &str = "xdp_bench_vm";
    pub const XDP_BENCH_UNDERLAY: &str = "xdp_bench_underlay";
    /// All programs the daemon and the verifier test load.
    pub const ALL: [&str; 5] = [
        XDP_VM,
        XDP_UNDERLAY,
        XDP_FLOOR,
        XDP_BENCH_VM,
        XDP_BENCH_UNDERLAY,
    ];
}

/// Well-known protocol numbers and ports.
pub mod proto {
    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_8021Q: u16 = 0x8100;
    pub const ETH_P_8021AD: u16 = 0x88A8;
    pub const ETH_P_IPV6: u16 = 0x86DD;
    pub const IPPROTO_ICMP: u8 = 1;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
    pub const IPPROTO_ICMPV6: u8 = 58;
    pub const VXLAN_PORT: u16 = 4789;
    /// Outer Ethernet + IPv4 + UDP + VXLAN headers added by encapsulation.
    pub const VXLAN_OVERHEAD: usize = 14 + 20 + 8 + 8;
}
