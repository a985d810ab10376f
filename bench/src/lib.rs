//! `sluice-bench`: Sluice's benchmark harness. One module per mode (`micro` today; `e2e`
//! and `control` need the VPC overlay), plus the shared measuring, statistics and
//! reporting pieces.

pub mod affinity;
pub mod machine;
pub mod micro;
pub mod packets;
pub mod report;
pub mod stats;
pub mod vpc;
