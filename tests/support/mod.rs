//! Shared test support. Each test binary includes this with `mod support;`
//! and uses only part of it, hence the blanket `dead_code` allowance.
#![allow(dead_code)]

pub mod registry;
pub mod signer;
pub mod sigstore;
