//! Sluice's userspace dataplane library: loading and pinning the XDP programs, typed map
//! handles, metrics and the daemon's API. The daemon binary is `src/bin/sluiced.rs`.

pub mod agent;
pub mod api;
pub mod client;
pub mod config;
pub mod conntrack;
pub mod controller;
pub mod daemon;
pub mod fixture;
pub mod intent;
pub mod lab;
pub mod lb;
pub mod loader;
pub mod metrics;
pub mod nat;
pub mod sg;
pub mod stats;
pub mod sys_bpf;

/// The compiled eBPF object, embedded at build time by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice"));
pub mod vpc;
