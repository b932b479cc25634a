//! Pushing a built image with `oci-client`: each layer blob streamed from its file (one
//! monolithic PUT, so blobs of hundreds of MiB never sit in memory), blobs the
//! repository already has skipped, then the config and the manifest.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use indicatif::ProgressBar;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::io::AsyncReadExt;

use super::manifest::{BuiltImage, MEDIA_TYPE_MANIFEST};
use super::reference::ImageRef;
use super::Progress;

/// Registry credentials. `Debug` never shows the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials (an anonymous token where the registry hands them out).
    #[default]
    Anonymous,
    /// HTTP basic credentials (also sent to a token service).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => {
                write!(f, "Basic({username:?}, <password>)")
            }
        }
    }
}

/// How to reach the registry.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Plain HTTP to this registry (`--plain-http`); HTTPS otherwise.
    pub plain_http: bool,
    /// Who to be.
    pub credentials: Credentials,
}

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    /// Blobs uploaded (layers and config).
    pub uploaded: usize,
    /// Blobs the repository already had.
    pub skipped: usize,
    /// Where the manifest went.
    pub manifest_url: String,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// No connection to the registry.
    #[error("registry {registry} is unreachable: {why}")]
    Unreachable {
        /// `HOST:PORT`.
        registry: String,
        /// The connection error.
        why: String,
    },
    /// The registry answered with an error status.
    #[error("registry {registry} refused {what}: HTTP {status}{message}")]
    Refused {
        /// `HOST:PORT`.
        registry: String,
        /// What was being done.
        what: String,
        /// The HTTP status code, with its reason.
        status: Status,
        /// The registry's message (`: …`), or nothing.
        message: String,
    },
    /// Anything else the client or registry did wrong.
    #[error("registry {registry}: {what}: {why}")]
    Failed {
        /// `HOST:PORT`.
        registry: String,
        /// What was being done.
        what: String,
        /// The error.
        why: String,
    },
    /// A layer file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The push was cancelled.
    #[error("interrupted")]
    Cancelled,
}

/// An HTTP status code, shown with its reason phrase (`403 Forbidden`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16);

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match http::StatusCode::from_u16(self.0)
            .ok()
            .and_then(|s| s.canonical_reason())
        {
            Some(reason) => write!(f, "{} {reason}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// The error and its causes, `: `-joined, each once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The registry's error body, on one line and not too long.
fn brief(message: &str) -> String {
    let one_line: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return String::new();
    }
    let mut cut: String = one_line.chars().take(400).collect();
    if cut.len() < one_line.len() {
        cut.push('…');
    }
    format!(": {cut}")
}

fn map_err(registry: &str, what: &str, plain_http: bool, e: OciDistributionError) -> PushError {
    let registry = registry.to_string();
    let what = what.to_string();
    match e {
        OciDistributionError::ServerError { code, message, .. } => PushError::Refused {
            registry,
            what,
            status: Status(code),
            message: brief(&message),
        },
        OciDistributionError::UnauthorizedError { .. } => PushError::Refused {
            registry,
            what,
            status: Status(401),
            message: String::new(),
        },
        OciDistributionError::RequestError(r) => {
            if let Some(status) = r.status() {
                return PushError::Refused {
                    registry,
                    what,
                    status: Status(status.as_u16()),
                    message: String::new(),
                };
            }
            let mut why = error_chain(&r);
            if r.is_connect() || r.is_timeout() {
                let lower = why.to_lowercase();
                if !plain_http && (lower.contains("ssl") || lower.contains("tls")) {
                    why.push_str(" (a plain-HTTP registry needs --plain-http)");
                }
                PushError::Unreachable { registry, why }
            } else {
                PushError::Failed {
                    registry,
                    what,
                    why,
                }
            }
        }
        other => PushError::Failed {
            registry,
            what,
            why: error_chain(&other),
        },
    }
}

/// A client for one target repository, with credentials checked.
pub struct Pusher {
    client: Client,
    reference: Reference,
    target: ImageRef,
    plain_http: bool,
}

impl Pusher {
    /// Makes the client and authenticates for pushing to `target` (which also tells
    /// whether the registry is reachable at all).
    pub async fn connect(target: &ImageRef, opts: &PushOptions) -> Result<Pusher, PushError> {
        let registry = target.registry().to_string();
        let config = ClientConfig {
            protocol: if opts.plain_http {
                // The client compares this with the reference's registry, port included.
                ClientProtocol::HttpsExcept(vec![registry.clone()])
            } else {
                ClientProtocol::Https
            },
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(15)),
            ..Default::default()
        };
        let client = Client::try_from(config).map_err(|e| PushError::Failed {
            registry: registry.clone(),
            what: "making the HTTP client".into(),
            why: error_chain(&e),
        })?;
        let reference = Reference::with_tag(
            registry.clone(),
            target.repository().to_string(),
            target.tag().to_string(),
        );
        let auth = match &opts.credentials {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
        };
        client
            .auth(&reference, &auth, RegistryOperation::Push)
            .await
            .map_err(|e| map_err(&registry, "authentication", opts.plain_http, e))?;
        Ok(Pusher {
            client,
            reference,
            target: target.clone(),
            plain_http: opts.plain_http,
        })
    }

    fn err(&self, what: &str) -> impl FnOnce(OciDistributionError) -> PushError + '_ {
        let what = what.to_string();
        move |e| map_err(self.target.registry(), &what, self.plain_http, e)
    }

    /// Whether the repository has the blob (unknown counts as no).
    async fn has_blob(&self, digest: &str) -> bool {
        match self.client.blob_exists(&self.reference, digest).await {
            Ok(yes) => yes,
            Err(e) => {
                log::debug!("HEAD {digest}: {e}");
                false
            }
        }
    }

    /// Pushes the layers (streamed from their files), the config and the manifest.
    pub async fn push(
        &self,
        image: &BuiltImage,
        progress: &Progress,
    ) -> Result<PushReport, PushError> {
        let mut uploaded = 0;
        let mut skipped = 0;
        let n = image.layers.len();
        for (i, layer) in image.layers.iter().enumerate() {
            if progress.is_cancelled() {
                return Err(PushError::Cancelled);
            }
            let short = short(&layer.digest);
            if self.has_blob(&layer.digest).await {
                progress.note(format!("layer {}/{n} {short}: already there", i + 1));
                skipped += 1;
                continue;
            }
            let bar = progress.bytes(format!("pushing layer {}/{n} {short}", i + 1), layer.size);
            let stream = file_stream(&layer.path, bar.clone()).await?;
            self.client
                .push_blob_stream(&self.reference, stream, &layer.digest, Some(layer.size))
                .await
                .map_err(self.err(&format!("the upload of layer {} ({})", i + 1, layer.digest)))?;
            bar.finish_and_clear();
            uploaded += 1;
        }
        if self.has_blob(&image.config_digest).await {
            skipped += 1;
        } else {
            self.client
                .push_blob(&self.reference, image.config.clone(), &image.config_digest)
                .await
                .map_err(self.err(&format!(
                    "the upload of the config ({})",
                    image.config_digest
                )))?;
            uploaded += 1;
        }
        let manifest_url = self
            .client
            .push_manifest_raw(
                &self.reference,
                image.manifest.clone(),
                http::HeaderValue::from_static(MEDIA_TYPE_MANIFEST),
            )
            .await
            .map_err(self.err(&format!("the manifest for {}", self.target)))?;
        Ok(PushReport {
            uploaded,
            skipped,
            manifest_url,
        })
    }
}

/// Connects to `target`'s registry and pushes `image` there.
pub async fn push(
    image: &BuiltImage,
    target: &ImageRef,
    opts: &PushOptions,
    progress: &Progress,
) -> Result<PushReport, PushError> {
    Pusher::connect(target, opts)
        .await?
        .push(image, progress)
        .await
}

/// `sha256:0123456789ab` (the first 12 hex digits).
fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// The file's bytes in chunks of up to 1 MiB, counted on `bar`.
async fn file_stream(
    path: &Path,
    bar: ProgressBar,
) -> Result<impl Stream<Item = Result<Bytes, OciDistributionError>> + Send + 'static, PushError> {
    const CHUNK: usize = 1 << 20;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| PushError::Io {
            path: path.display().to_string(),
            source,
        })?;
    Ok(futures::stream::try_unfold(
        (file, bar),
        |(mut file, bar)| async move {
            let mut buf = BytesMut::with_capacity(CHUNK);
            while buf.len() < CHUNK {
                if file.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                return Ok(None);
            }
            bar.inc(buf.len() as u64);
            Ok(Some((buf.freeze(), (file, bar))))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn credentials_never_show_the_password() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        let opts = PushOptions {
            plain_http: true,
            credentials: c,
        };
        let s = format!("{opts:?}");
        assert!(!s.contains("hunter2") && s.contains("\"u\""), "{s}");
    }

    #[test]
    fn status_and_messages() {
        assert_eq!(Status(403).to_string(), "403 Forbidden");
        assert_eq!(Status(599).to_string(), "599");
        assert_eq!(brief("  {\"errors\":\n [1] } "), ": {\"errors\": [1] }");
        assert_eq!(brief(""), "");
        assert!(brief(&"x".repeat(1000)).ends_with('…'));
        let e = map_err(
            "h:1",
            "the manifest",
            true,
            OciDistributionError::ServerError {
                code: 400,
                url: "u".into(),
                message: "MANIFEST_INVALID".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "registry h:1 refused the manifest: HTTP 400 Bad Request: MANIFEST_INVALID"
        );
    }

    #[tokio::test]
    async fn file_stream_reads_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let bar = ProgressBar::hidden();
        let chunks: Vec<Bytes> = file_stream(&path, bar.clone())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks.concat(), data);
        assert_eq!(bar.position(), data.len() as u64);
        assert!(matches!(
            file_stream(&dir.path().join("none"), bar).await,
            Err(PushError::Io { .. })
        ));
    }

    /// A closed loopback port: unreachable, named.
    #[tokio::test]
    async fn unreachable_registry() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let target: ImageRef = format!("127.0.0.1:{port}/x:y").parse().unwrap();
        let e = Pusher::connect(
            &target,
            &PushOptions {
                plain_http: true,
                ..Default::default()
            },
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(e, PushError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    }

    /// A fake registry on loopback that refuses everything with 403: the error names
    /// the status and the registry's message.
    #[tokio::test]
    async fn refused_push_names_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for _ in 0..20 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let _ = s.read(&mut buf).await;
                    let body = r#"{"errors":[{"code":"DENIED","message":"no pushing here"}]}"#;
                    let _ = s
                        .write_all(
                            format!(
                                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n\
                                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, b"data").unwrap();
        let image = super::super::manifest::assemble(
            super::super::manifest::ImageConfig::for_rootfs(),
            vec![super::super::layer::Layer {
                path: blob,
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                digest: super::super::layer::sha256_bytes(b"data"),
                size: 4,
                diff_id: super::super::layer::sha256_bytes(b"data"),
                annotations: Default::default(),
            }],
        )
        .unwrap();
        let target: ImageRef = format!("127.0.0.1:{port}/x:y").parse().unwrap();
        let e = push(
            &image,
            &target,
            &PushOptions {
                plain_http: true,
                ..Default::default()
            },
            &Progress::hidden(),
        )
        .await
        .unwrap_err();
        server.abort();
        let s = e.to_string();
        assert!(
            matches!(
                e,
                PushError::Refused {
                    status: Status(403),
                    ..
                }
            ),
            "{s}"
        );
        assert!(
            s.contains("HTTP 403 Forbidden") && s.contains("no pushing here"),
            "{s}"
        );
    }
}
