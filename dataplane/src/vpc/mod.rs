//! The VPC overlay, userspace side (the kernel side is `ebpf/src/vpc.rs`).
//!
//! Intent (VPCs, subnets, hosts, NICs, routes, peerings) is compiled by pure code into
//! [`tables::HostTables`], everything one host's maps should hold; the agent resolves
//! interface names to ifindexes and applies the difference to the maps in an order that
//! never opens a window of wrong forwarding.

pub mod apply;
pub mod compile;
pub mod delta;
pub mod diff;
pub mod tables;
