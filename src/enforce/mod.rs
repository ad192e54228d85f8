//! Enforcement: decisions at PullImage and CreateContainer, modes, the decision cache, the
//! audit log and the report over it.

pub mod audit;
pub mod break_glass;
pub mod cache;
pub mod checker;
pub mod decision;
pub mod gate;
pub mod metrics;
pub mod report;
