//! Every gRPC path pullgate serves, and what kind of surface each one is.
//!
//! An image reaches the node or a container only through a handful of CRI methods; this table
//! names each method of the CRI `RuntimeService` and `ImageService` of Kubernetes 1.33 to 1.36
//! (`k8s.io/cri-api/pkg/apis/runtime/v1/api.proto`, and `runtime.v1alpha2`, which containerd 1.6
//! still serves, with the same field numbers in every message pullgate decodes) and says how it is
//! checked. It only classifies: what to do with a surface (check, refuse, let through and record)
//! is decided behind the [`Gate`](super::intercept::Gate).
//!
//! A path that is not one of the two CRI services (containerd's native API on the same socket,
//! gRPC health, reflection) is [`Route::NotCri`]; an `ImageService` method newer than this table is
//! [`Route::UnknownImageMethod`], because it might bring an image in. An unknown `RuntimeService`
//! method is forwarded: new ones appear every release (sandbox resizing, streaming lists), and
//! none of the image-bearing calls can be added to it without a new message pullgate would have
//! to learn anyway.

/// The CRI API versions pullgate serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    /// containerd 1.6 and 1.7 serve it; 2.0 removed it. Gated exactly like v1.
    V1Alpha2,
}

/// The two CRI services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Runtime,
    Image,
}

/// How a known CRI method can bring an image onto the node or into a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Pulls an image: the reference is checked before containerd fetches anything.
    Pull,
    /// Runs an image: the container's image, every image volume (`Mount.image`) and a
    /// checkpoint to restore are checked.
    Create,
    /// Starts a pod: containerd runs (and, when absent, pulls) its configured sandbox image.
    Sandbox,
    /// Reads one image's state; decoded only for the log line.
    Inspect,
    /// Cannot bring an image onto the node or into a container.
    Inert,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub service: Service,
    pub name: &'static str,
    pub surface: Surface,
    /// How it is checked, one line (shown in the README's table).
    pub check: &'static str,
}

const fn m(service: Service, name: &'static str, surface: Surface, check: &'static str) -> Method {
    Method { service, name, surface, check }
}

use Service::{Image, Runtime};
use Surface::{Create, Inert, Inspect, Pull, Sandbox};

/// Every method of CRI v1 in Kubernetes 1.33-1.36 (v1alpha2 has a subset of them).
pub const METHODS: &[Method] = &[
    m(Image, "PullImage", Pull, "reference verified against the policy, containerd pulls the verified digest"),
    m(Runtime, "CreateContainer", Create, "container image and every image volume (Mount.image) present and verified; an image containerd does not have (a checkpoint archive) is refused"),
    m(Runtime, "RunPodSandbox", Sandbox, "containerd's sandbox image verified or exempt; absent, pullgate pulls it through the gate first"),
    m(Image, "ImageStatus", Inspect, "read-only, forwarded"),
    m(Image, "ListImages", Inert, "read-only"),
    m(Image, "StreamImages", Inert, "read-only list stream (KEP-5825)"),
    m(Image, "RemoveImage", Inert, "removes only"),
    m(Image, "ImageFsInfo", Inert, "read-only"),
    m(Runtime, "Version", Inert, "read-only"),
    m(Runtime, "StopPodSandbox", Inert, "stops only"),
    m(Runtime, "RemovePodSandbox", Inert, "removes only"),
    m(Runtime, "PodSandboxStatus", Inert, "read-only"),
    m(Runtime, "ListPodSandbox", Inert, "read-only"),
    m(Runtime, "StreamPodSandboxes", Inert, "read-only list stream (KEP-5825)"),
    m(Runtime, "StartContainer", Inert, "starts a container CreateContainer already checked"),
    m(Runtime, "StopContainer", Inert, "stops only"),
    m(Runtime, "RemoveContainer", Inert, "removes only"),
    m(Runtime, "ListContainers", Inert, "read-only"),
    m(Runtime, "StreamContainers", Inert, "read-only list stream (KEP-5825)"),
    m(Runtime, "ContainerStatus", Inert, "read-only"),
    m(Runtime, "UpdateContainerResources", Inert, "resources only"),
    m(Runtime, "ReopenContainerLog", Inert, "logs only"),
    m(Runtime, "ExecSync", Inert, "runs in a container CreateContainer already checked"),
    m(Runtime, "Exec", Inert, "runs in a container CreateContainer already checked"),
    m(Runtime, "Attach", Inert, "attaches to a checked container"),
    m(Runtime, "PortForward", Inert, "network only"),
    m(Runtime, "ContainerStats", Inert, "read-only"),
    m(Runtime, "ListContainerStats", Inert, "read-only"),
    m(Runtime, "StreamContainerStats", Inert, "read-only list stream (KEP-5825)"),
    m(Runtime, "PodSandboxStats", Inert, "read-only"),
    m(Runtime, "ListPodSandboxStats", Inert, "read-only"),
    m(Runtime, "StreamPodSandboxStats", Inert, "read-only list stream (KEP-5825)"),
    m(Runtime, "UpdateRuntimeConfig", Inert, "pod CIDR only"),
    m(Runtime, "Status", Inert, "read-only"),
    m(Runtime, "CheckpointContainer", Inert, "writes a checkpoint out; restoring one is a CreateContainer"),
    m(Runtime, "GetContainerEvents", Inert, "read-only event stream"),
    m(Runtime, "ListMetricDescriptors", Inert, "read-only"),
    m(Runtime, "ListPodSandboxMetrics", Inert, "read-only"),
    m(Runtime, "StreamPodSandboxMetrics", Inert, "read-only list stream (KEP-5825)"),
    m(Runtime, "RuntimeConfig", Inert, "read-only"),
    m(Runtime, "UpdatePodSandboxResources", Inert, "resources only"),
];

/// Where a gRPC path goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// A method of the table.
    Known { version: Version, method: &'static Method },
    /// An `ImageService` method the table does not have: it might bring an image in.
    UnknownImageMethod { version: Version, name: &'a str },
    /// A `RuntimeService` method the table does not have (forwarded; see the module docs).
    UnknownRuntimeMethod { version: Version, name: &'a str },
    /// Not CRI: containerd's own API, health, reflection, anything else.
    NotCri,
}

/// Classifies a gRPC request path (`/package.Service/Method`).
pub fn route(path: &str) -> Route<'_> {
    let Some((service, name)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Route::NotCri;
    };
    let (version, service) = match service {
        "runtime.v1.RuntimeService" => (Version::V1, Runtime),
        "runtime.v1.ImageService" => (Version::V1, Image),
        "runtime.v1alpha2.RuntimeService" => (Version::V1Alpha2, Runtime),
        "runtime.v1alpha2.ImageService" => (Version::V1Alpha2, Image),
        _ => return Route::NotCri,
    };
    if name.is_empty() || name.contains('/') {
        return Route::NotCri;
    }
    match METHODS.iter().find(|m| m.service == service && m.name == name) {
        Some(method) => Route::Known { version, method },
        None if service == Image => Route::UnknownImageMethod { version, name },
        None => Route::UnknownRuntimeMethod { version, name },
    }
}

/// The surface of a path, for the calls pullgate decodes (`None`: forwarded undecoded).
pub fn decoded_surface(path: &str) -> Option<Surface> {
    match route(path) {
        Route::Known { method, .. } if method.surface != Inert => Some(method.surface),
        _ => None,
    }
}

/// Whether `name` is a well-formed `ImageService` method to allow by name in configuration:
/// `runtime.v1.ImageService/Name` or `runtime.v1alpha2.ImageService/Name` (a leading `/` is
/// accepted), not one the table already knows. Returns the path form (`/runtime...`).
pub fn allowable_image_method(name: &str) -> Result<String, String> {
    let path = if name.starts_with('/') { name.to_string() } else { format!("/{name}") };
    match route(&path) {
        Route::UnknownImageMethod { name: method, .. } if method.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => Ok(path),
        Route::UnknownImageMethod { .. } => Err(format!("{name:?} is not a valid gRPC method name")),
        Route::Known { method, .. } => Err(format!("{name:?} is a method pullgate knows ({}), it needs no entry", method.check)),
        Route::UnknownRuntimeMethod { .. } => {
            Err(format!("{name:?} is a RuntimeService method: unknown RuntimeService methods are forwarded already"))
        }
        Route::NotCri => Err(format!(
            "{name:?} is not an ImageService method: expected runtime.v1.ImageService/<Method> or runtime.v1alpha2.ImageService/<Method>"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_listed_once() {
        for (i, a) in METHODS.iter().enumerate() {
            for b in &METHODS[i + 1..] {
                assert!(!(a.service == b.service && a.name == b.name), "{} listed twice", a.name);
            }
        }
    }

    #[test]
    fn image_bearing_methods_are_gated_in_both_versions() {
        for version in ["v1", "v1alpha2"] {
            assert_eq!(decoded_surface(&format!("/runtime.{version}.ImageService/PullImage")), Some(Pull));
            assert_eq!(decoded_surface(&format!("/runtime.{version}.RuntimeService/CreateContainer")), Some(Create));
            assert_eq!(decoded_surface(&format!("/runtime.{version}.RuntimeService/RunPodSandbox")), Some(Sandbox));
            assert_eq!(decoded_surface(&format!("/runtime.{version}.ImageService/ImageStatus")), Some(Inspect));
            assert_eq!(decoded_surface(&format!("/runtime.{version}.RuntimeService/Version")), None);
        }
        let only = |s: Surface| METHODS.iter().filter(|m| m.surface == s).map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(only(Pull), ["PullImage"]);
        assert_eq!(only(Create), ["CreateContainer"]);
        assert_eq!(only(Sandbox), ["RunPodSandbox"]);
    }

    #[test]
    fn streaming_lists_are_known_and_inert() {
        let path = "/runtime.v1.ImageService/StreamImages";
        assert!(matches!(route(path), Route::Known { method, .. } if method.surface == Inert), "{path}");
        for name in ["StreamContainers", "StreamPodSandboxes", "StreamContainerStats", "StreamPodSandboxStats", "StreamPodSandboxMetrics"] {
            let path = format!("/runtime.v1.RuntimeService/{name}");
            assert!(matches!(route(&path), Route::Known { method, .. } if method.surface == Inert), "{name}");
        }
    }

    #[test]
    fn paths_outside_cri_are_not_cri() {
        for path in [
            "/containerd.services.images.v1.Images/Create",
            "/containerd.services.content.v1.Content/Write",
            "/containerd.services.transfer.v1.Transfer/Transfer",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/runtime.v1.ImageService",
            "/runtime.v1.ImageService/",
            "/runtime.v1.ImageService/PullImage/x",
            "/runtime.v1beta1.ImageService/PullImage",
            "/runtime.v1.imageservice/PullImage",
            "runtime.v1.ImageService/PullImage",
            "",
            "/",
        ] {
            assert_eq!(route(path), Route::NotCri, "{path}");
        }
    }

    #[test]
    fn unknown_methods_by_service() {
        assert_eq!(route("/runtime.v1.ImageService/FetchImage"), Route::UnknownImageMethod { version: Version::V1, name: "FetchImage" });
        assert_eq!(
            route("/runtime.v1alpha2.ImageService/FetchImage"),
            Route::UnknownImageMethod { version: Version::V1Alpha2, name: "FetchImage" }
        );
        assert_eq!(route("/runtime.v1.RuntimeService/NewThing"), Route::UnknownRuntimeMethod { version: Version::V1, name: "NewThing" });
    }

    #[test]
    fn allowable_names() {
        assert_eq!(allowable_image_method("runtime.v1.ImageService/FetchImage").unwrap(), "/runtime.v1.ImageService/FetchImage");
        assert_eq!(allowable_image_method("/runtime.v1alpha2.ImageService/X").unwrap(), "/runtime.v1alpha2.ImageService/X");
        assert!(allowable_image_method("runtime.v1.ImageService/PullImage").unwrap_err().contains("knows"));
        assert!(allowable_image_method("runtime.v1.RuntimeService/X").is_err());
        assert!(allowable_image_method("containerd.services.images.v1.Images/Create").is_err());
        assert!(allowable_image_method("runtime.v1.ImageService/a-b").is_err());
        assert!(allowable_image_method("FetchImage").is_err());
    }
}
