//! RunPodSandbox: the one call where containerd picks the image itself.
//!
//! kubelet sends no image with RunPodSandbox; containerd runs its configured sandbox ("pause")
//! image, and pulls it by tag, unverified, when it is absent. So pullgate learns that image and
//! gates the call on it:
//! - containerd 1.6/1.7 report it in the CRI `Status` verbose info (`info["config"]`, JSON, key
//!   `sandboxImage`); containerd 2.x configures it as `pinned_images.sandbox` of the
//!   `io.containerd.cri.v1.images` plugin and reports it nowhere, so pullgate's configuration
//!   names it (`cri.sandbox_image`). Unknown, an enforcing gate refuses the call.
//! - Absent, pullgate pulls it through the gate first, as if kubelet had asked: allowed, the
//!   verified digest is pulled and tagged (so containerd finds it and never pulls by tag);
//!   refused, the RunPodSandbox is refused with the reason. Then the present image is decided like
//!   a container's image.

use bytes::Bytes;
use http::Response;

use super::api;
use super::intercept::{pod_of, refusal, CallLog, CreateVerdict, PullCall, PullVerdict, SandboxCall};
use super::proxy::{Proxy, ResponseBody};

const STATUS: &str = "/runtime.v1.RuntimeService/Status";
const PULL_IMAGE: &str = "/runtime.v1.ImageService/PullImage";

/// The sandbox image in containerd's verbose `Status` info (containerd 1.6 and 1.7).
pub fn reported_sandbox_image(info: &std::collections::HashMap<String, String>) -> Option<String> {
    let config: serde_json::Value = serde_json::from_str(info.get("config")?).ok()?;
    let image = config.get("sandboxImage")?.as_str()?.trim();
    (!image.is_empty()).then(|| image.to_string())
}

impl Proxy {
    /// containerd's sandbox image: as containerd reports it, else as configured.
    pub async fn sandbox_image(&self) -> Result<Option<String>, String> {
        let status: api::StatusResponse = self.unary_upstream(STATUS, &api::StatusRequest { verbose: true }).await?;
        Ok(reported_sandbox_image(&status.info).or_else(|| self.configured_sandbox_image().map(str::to_string)))
    }

    pub(super) async fn run_pod_sandbox(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        req: api::RunPodSandboxRequest,
    ) -> (Response<ResponseBody>, CallLog) {
        let (namespace, pod) = pod_of(req.config.as_ref());
        let mut log = CallLog { pod: pod.clone(), ..Default::default() };
        let Some(gate) = self.gate() else {
            return (self.forward_buffered(parts, body).await, log);
        };
        let image = match self.sandbox_image().await {
            Ok(i) => i,
            Err(e) => {
                log.verdict = Some("refused".into());
                return (refusal(&format!("cannot ask containerd for its sandbox image to check it: {e}")), log);
            }
        };
        let mut call = SandboxCall { image: image.clone(), namespace: namespace.clone(), pod: pod.clone(), status: None };
        if let Some(image) = &image {
            log.image = image.clone();
            call.status = match self.image_status(image).await {
                Ok(s) => s,
                Err(e) => {
                    log.verdict = Some("refused".into());
                    return (refusal(&format!("cannot look up sandbox image {image} in containerd to check it: {e}")), log);
                }
            };
            if call.status.is_none() {
                // Absent: containerd would pull it by tag. Pull it through the gate instead.
                let pull = PullCall { image: image.clone(), namespace, pod, auth: None };
                match gate.pull(&pull).await {
                    PullVerdict::Refuse(reason) => {
                        log.verdict = Some("refused".into());
                        return (refusal(&format!("sandbox image {image}: {reason}")), log);
                    }
                    PullVerdict::Pin { reference, tag_as } => {
                        if let Err(e) = self.pull_pinned(&reference, tag_as.as_deref()).await {
                            log.verdict = Some("refused".into());
                            return (refusal(&format!("sandbox image {image}: pulling the verified {reference} failed: {e}")), log);
                        }
                        call.status = match self.image_status(image).await {
                            Ok(s) => s,
                            Err(e) => {
                                log.verdict = Some("refused".into());
                                return (refusal(&format!("cannot look up sandbox image {image} in containerd to check it: {e}")), log);
                            }
                        };
                    }
                    // Exempt, unmatched and allowed, or audit mode: containerd pulls it itself.
                    PullVerdict::Forward => {}
                }
            }
        }
        match gate.sandbox(&call).await {
            CreateVerdict::Forward => {
                log.verdict = Some("forward".into());
                (self.forward_buffered(parts, body).await, log)
            }
            CreateVerdict::Refuse(reason) => {
                log.verdict = Some("refused".into());
                (refusal(&reason), log)
            }
        }
    }

    /// Has containerd pull exactly `reference` (a verified digest), then points `tag_as` at it.
    async fn pull_pinned(&self, reference: &str, tag_as: Option<&str>) -> Result<(), String> {
        let req = api::PullImageRequest {
            image: Some(api::ImageSpec { image: reference.into(), ..Default::default() }),
            auth: None,
            sandbox_config: None,
        };
        let _: api::PullImageResponse = self.unary_upstream(PULL_IMAGE, &req).await?;
        if let Some(tag) = tag_as {
            self.images().tag(reference, tag).await.map_err(|e| format!("pulled, but cannot tag it {tag}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_image_from_containerd_1_6_status() {
        let info =
            [("config".to_string(), r#"{"containerd":{},"sandboxImage":"registry.k8s.io/pause:3.6","stateDir":"/run"}"#.to_string())]
                .into();
        assert_eq!(reported_sandbox_image(&info).as_deref(), Some("registry.k8s.io/pause:3.6"));
    }

    #[test]
    fn containerd_2_reports_none() {
        // containerd 2.3's `config` has no sandbox image (it lives in the images plugin).
        let info = [("config".to_string(), r#"{"containerd":{},"enableCDI":true}"#.to_string())].into();
        assert_eq!(reported_sandbox_image(&info), None);
        assert_eq!(reported_sandbox_image(&Default::default()), None);
        let junk = [("config".to_string(), "{not json".to_string())].into();
        assert_eq!(reported_sandbox_image(&junk), None);
        let empty = [("config".to_string(), r#"{"sandboxImage":" "}"#.to_string())].into();
        assert_eq!(reported_sandbox_image(&empty), None);
    }
}
