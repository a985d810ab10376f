//! `sluice-bench`: Sluice's benchmark harness. One module per mode (`micro`, `e2e`,
//! `control`), plus the shared measuring, statistics and reporting pieces.

pub mod affinity;
pub mod control;
pub mod e2e;
pub mod lb;
pub mod machine;
pub mod micro;
pub mod nat;
pub mod packets;
pub mod report;
pub mod sg;
pub mod stats;
pub mod vpc;
