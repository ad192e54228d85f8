//! Generates the Rust types for pullgate's subset of CRI v1 (`proto/cri_subset.proto`).
//!
//! Only message types are generated: pullgate serves and forwards CRI at the HTTP/2 level, so it
//! needs no generated service stubs.
const PROTOS: &[&str] = &["proto/cri_subset.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().build_server(false).build_client(false).compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
