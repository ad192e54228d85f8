//! A kubelet-like CRI client (the `k8s-cri` crate's full CRI v1 API) over a unix socket, plus a
//! raw-bytes gRPC client for byte-level comparisons and methods no proto knows.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

/// A lazily connected channel to a CRI socket, as kubelet opens one.
pub fn channel(socket: &Path) -> Channel {
    let socket: PathBuf = socket.to_owned();
    Endpoint::from_static("http://localhost").connect_timeout(std::time::Duration::from_secs(5)).connect_with_connector_lazy(
        tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }),
    )
}

pub fn runtime(socket: &Path) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(channel(socket)).max_decoding_message_size(64 << 20)
}

pub fn images(socket: &Path) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(channel(socket)).max_decoding_message_size(64 << 20)
}

/// Passes message bytes through unchanged.
#[derive(Clone, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// One unary call with raw message bytes, on any method path.
pub async fn raw_unary(channel: Channel, path: &'static str, message: Bytes) -> Result<Response<Bytes>, Status> {
    raw_unary_req(channel, path, Request::new(message)).await
}

pub async fn raw_unary_req(channel: Channel, path: &'static str, req: Request<Bytes>) -> Result<Response<Bytes>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(req, PathAndQuery::from_static(path), RawCodec).await
}
