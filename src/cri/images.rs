//! containerd's image records, reached with containerd's own API (`containerd-client`) on the
//! same socket as CRI.
//!
//! pullgate has containerd pull a verified image by digest, so a tag that moves on the mirror
//! after verification cannot bring in other bytes. containerd's CRI plugin then only records the
//! digest reference; pullgate adds the tag record (`repo:tag` -> the verified manifest), as
//! containerd itself does when it pulls by tag, so kubelet's `ImageStatus` for the reference it
//! asked for finds the image and `IfNotPresent` does not pull again. The CRI plugin picks the new
//! record up from containerd's image events.

use std::path::{Path, PathBuf};

use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{CreateImageRequest, GetImageRequest, Image, UpdateImageRequest};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request};

/// The containerd namespace the CRI plugin keeps Kubernetes' images in.
pub const K8S_NAMESPACE: &str = "k8s.io";

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("containerd has no image record {0:?}")]
    NotFound(String),
    #[error("containerd image service: {0}")]
    Rpc(String),
}

/// containerd's image service for the CRI namespace.
#[derive(Clone)]
pub struct ContainerdImages {
    client: ImagesClient<Channel>,
}

impl ContainerdImages {
    /// Connects lazily (the first call connects; tonic reconnects after containerd restarts).
    pub fn new(socket: &Path) -> ContainerdImages {
        let socket: PathBuf = socket.to_owned();
        let channel = Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }));
        ContainerdImages { client: ImagesClient::new(channel) }
    }

    fn request<T>(msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert("containerd-namespace", tonic::metadata::MetadataValue::from_static(K8S_NAMESPACE));
        req.set_timeout(std::time::Duration::from_secs(10));
        req
    }

    pub async fn get(&self, name: &str) -> Result<Image, ImagesError> {
        match self.client.clone().get(Self::request(GetImageRequest { name: name.into() })).await {
            Ok(r) => r.into_inner().image.ok_or_else(|| ImagesError::NotFound(name.into())),
            Err(s) if s.code() == Code::NotFound => Err(ImagesError::NotFound(name.into())),
            Err(s) => Err(ImagesError::Rpc(s.message().to_string())),
        }
    }

    /// Points image record `name` at the same manifest as record `source` (creating or
    /// replacing it), with the same labels. Nothing is written when `name` already is such a
    /// record (every pull after the first of an image): no write, no image event for
    /// containerd's CRI plugin to process.
    pub async fn tag(&self, source: &str, name: &str) -> Result<(), ImagesError> {
        // Both records on the one connection at once: one round trip.
        let (src, existing) = tokio::join!(self.get(source), self.get(name));
        let src = src?;
        if let Ok(existing) = existing {
            if existing.target == src.target && existing.labels == src.labels {
                return Ok(());
            }
        }
        let image = Image { name: name.into(), labels: src.labels, target: src.target, created_at: None, updated_at: None };
        let mut client = self.client.clone();
        match client.create(Self::request(CreateImageRequest { image: Some(image.clone()), source_date_epoch: None })).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => client
                .update(Self::request(UpdateImageRequest { image: Some(image), update_mask: None, source_date_epoch: None }))
                .await
                .map(|_| ())
                .map_err(|s| ImagesError::Rpc(s.message().to_string())),
            Err(s) => Err(ImagesError::Rpc(s.message().to_string())),
        }
    }
}
