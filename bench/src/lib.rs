//! `sluice-bench`: Sluice's benchmark harness. One module per mode (`micro`, `control`;
//! `e2e` is not written yet), plus the shared measuring, statistics and reporting pieces.

pub mod affinity;
pub mod control;
pub mod machine;
pub mod micro;
pub mod packets;
pub mod report;
pub mod stats;
pub mod vpc;
