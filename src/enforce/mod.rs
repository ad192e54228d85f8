//! Enforcement: decisions at PullImage and CreateContainer, modes, the decision cache and the
//! audit log.

pub mod audit;
pub mod cache;
pub mod checker;
pub mod gate;
pub mod policy;
pub mod verify_cmd;
