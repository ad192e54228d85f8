//! The CRI side of pullgate: the socket kubelet talks to and the connection to containerd.

pub mod budget;
pub mod calls;
pub mod client;
pub mod detached;
pub mod frame_relay;
pub mod frames;
pub mod grpc;
pub mod images;
pub mod intercept;
pub mod late_pong;
pub mod listener;
pub mod methods;
pub mod proxy;
pub mod quiet;
pub mod relay;
pub mod sandbox;
pub mod server;
pub mod settings;
pub mod upstream;
pub mod wire;

/// pullgate's subset of the CRI v1 messages (`proto/cri_subset.proto`).
#[allow(clippy::all, missing_docs)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
}
