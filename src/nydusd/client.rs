//! A client for nydusd's HTTP API, spoken over its unix API socket.
//!
//! Every request has a timeout. An error body `{"code","message"}` becomes
//! [`ClientError::Api`], carrying the HTTP status and nydusd's message. Request bodies can
//! hold registry credentials (a RAFS mount's `config`): nothing here logs them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

use super::mountpoint::{self, MountpointError};

/// Default timeout of one API request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Characters left as they are in a query value; everything else is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Longest error body quoted back when it is not nydusd's JSON error.
const MAX_QUOTED_BODY: usize = 512;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The mountpoint was refused before any request was sent.
    #[error(transparent)]
    Mountpoint(#[from] MountpointError),
    /// The request could not be sent or its response not received.
    #[error("nydusd API {what} via {sock}: {source}")]
    Request {
        /// The call, e.g. `GET /api/v1/daemon`.
        what: String,
        /// The API socket.
        sock: PathBuf,
        /// The transport error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The request could not be built (e.g. a socket path that cannot form a URI).
    #[error("nydusd API {what}: cannot build the request: {source}")]
    BuildRequest {
        /// The call.
        what: String,
        /// The error.
        #[source]
        source: hyper::http::Error,
    },
    /// Reading the response body failed.
    #[error("nydusd API {what}: reading the response: {source}")]
    Body {
        /// The call.
        what: String,
        /// The transport error.
        #[source]
        source: hyper::Error,
    },
    /// No full response within the timeout.
    #[error("nydusd API {what} timed out after {timeout:?}")]
    Timeout {
        /// The call.
        what: String,
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// nydusd answered with an error.
    #[error("nydusd API {what} failed with HTTP {status}: {message}")]
    Api {
        /// The call.
        what: String,
        /// The HTTP status code.
        status: u16,
        /// nydusd's error code (`UNDEFINED` for most errors).
        code: String,
        /// nydusd's error message.
        message: String,
    },
    /// A success response whose body was not what the API documents.
    #[error("nydusd API {what}: unexpected response body: {source}")]
    Decode {
        /// The call.
        what: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status of an error answered by nydusd, if that is what this is.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The filesystem types lazyvm mounts in nydusd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsType {
    /// A host directory shared as it is.
    #[serde(rename = "passthrough_fs")]
    Passthrough,
    /// A RAFS (nydus) image.
    #[serde(rename = "rafs")]
    Rafs,
}

/// The body of `POST /api/v1/mount`.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct MountRequest {
    /// The filesystem type.
    pub fs_type: FsType,
    /// The shared directory, or the RAFS bootstrap file.
    pub source: String,
    /// The RAFS configuration (JSON text; may hold registry credentials), empty for
    /// passthrough.
    pub config: String,
    /// Files to prefetch after mounting (RAFS only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch_files: Option<Vec<String>>,
}

impl MountRequest {
    /// A passthrough mount of the host directory `dir`.
    pub fn passthrough(dir: &Path) -> Self {
        MountRequest {
            fs_type: FsType::Passthrough,
            source: dir.to_string_lossy().into_owned(),
            config: String::new(),
            prefetch_files: None,
        }
    }

    /// A RAFS mount of the bootstrap `source` with the nydusd configuration `config`.
    pub fn rafs(source: impl Into<String>, config: impl Into<String>) -> Self {
        MountRequest {
            fs_type: FsType::Rafs,
            source: source.into(),
            config: config.into(),
            prefetch_files: None,
        }
    }

    /// Sets the files to prefetch.
    pub fn with_prefetch_files(mut self, files: Vec<String>) -> Self {
        self.prefetch_files = (!files.is_empty()).then_some(files);
        self
    }
}

impl fmt::Debug for MountRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountRequest")
            .field("fs_type", &self.fs_type)
            .field("source", &self.source)
            .field(
                "config",
                &format_args!("<{} bytes, not shown>", self.config.len()),
            )
            .field("prefetch_files", &self.prefetch_files)
            .finish()
    }
}

/// Build information of the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BuildInfo {
    /// Package version, e.g. `v2.2.0`.
    pub package_ver: String,
    /// Git commit of the build.
    pub git_commit: String,
    /// Build time.
    pub build_time: String,
    /// Build profile.
    pub profile: String,
    /// Version of the compiler.
    pub rustc: String,
}

/// The answer of `GET /api/v1/daemon`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DaemonInfo {
    /// Daemon id (may be empty).
    pub id: Option<String>,
    /// Build information.
    pub version: BuildInfo,
    /// Daemon state, `RUNNING` once it serves.
    pub state: String,
    /// What the daemon has mounted, as nydusd reports it (kept opaque).
    pub backend_collection: serde_json::Value,
}

impl DaemonInfo {
    /// Whether the daemon is serving.
    pub fn is_running(&self) -> bool {
        self.state == "RUNNING"
    }

    /// The mountpoints listed in `backend_collection`.
    pub fn mountpoints(&self) -> Vec<String> {
        match &self.backend_collection {
            serde_json::Value::Object(map) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }
}

/// Filesystem metrics (`GET /api/v1/metrics`), the fields lazyvm reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct GlobalMetrics {
    /// Bytes read by the filesystem's users.
    pub data_read: u64,
    /// Successful filesystem operations, per operation kind.
    pub fop_hits: Vec<u64>,
    /// Failed filesystem operations, per operation kind.
    pub fop_errors: Vec<u64>,
    /// Everything else nydusd reports.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Storage backend metrics (`GET /api/v1/metrics/backend`), the fields lazyvm reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct BackendMetrics {
    /// Backend type, e.g. `localfs` or `registry`.
    pub backend_type: String,
    /// Read requests sent to the backend.
    pub read_count: u64,
    /// Failed read requests.
    pub read_errors: u64,
    /// Bytes read from the backend.
    pub read_amount_total: u64,
    /// Everything else nydusd reports.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

/// A client for one nydusd's API socket.
#[derive(Clone)]
pub struct NydusClient {
    sock: PathBuf,
    http: Client<UnixConnector, Full<Bytes>>,
    timeout: Duration,
}

impl fmt::Debug for NydusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NydusClient")
            .field("sock", &self.sock)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl NydusClient {
    /// A client for the API socket `sock`, with the default request timeout.
    pub fn new(sock: impl Into<PathBuf>) -> Self {
        NydusClient {
            sock: sock.into(),
            http: Client::unix(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The API socket.
    pub fn sock(&self) -> &Path {
        &self.sock
    }

    /// `GET /api/v1/daemon`.
    pub async fn daemon_info(&self) -> Result<DaemonInfo, ClientError> {
        self.get_json("/api/v1/daemon").await
    }

    /// Mounts a filesystem at `mountpoint` (`POST /api/v1/mount`), after checking the
    /// mountpoint against the request's filesystem type.
    pub async fn mount(&self, mountpoint: &str, req: &MountRequest) -> Result<(), ClientError> {
        mountpoint::validate(mountpoint, req.fs_type)?;
        let body = serde_json::to_vec(req).map_err(|source| ClientError::Decode {
            what: "POST /api/v1/mount".into(),
            source,
        })?;
        let path = format!("/api/v1/mount?mountpoint={}", encode(mountpoint));
        self.call_no_content(Method::POST, &path, Bytes::from(body))
            .await
            .map_err(|e| match e {
                // nydusd may quote the configuration back: never pass its secrets on.
                ClientError::Api {
                    what,
                    status,
                    code,
                    message,
                } => ClientError::Api {
                    what,
                    status,
                    code,
                    message: redact(&message, &req.config),
                },
                other => other,
            })
    }

    /// Unmounts the filesystem at `mountpoint` (`DELETE /api/v1/mount`).
    pub async fn umount(&self, mountpoint: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/mount?mountpoint={}", encode(mountpoint));
        self.call_no_content(Method::DELETE, &path, Bytes::new())
            .await
    }

    /// Filesystem metrics (`GET /api/v1/metrics`): of the filesystem mounted at `id`, or
    /// of the only one when `id` is `None`.
    pub async fn global_metrics(&self, id: Option<&str>) -> Result<GlobalMetrics, ClientError> {
        self.get_json(&with_id("/api/v1/metrics", id)).await
    }

    /// Storage backend metrics (`GET /api/v1/metrics/backend`): of backend `id`, or of the
    /// only one when `id` is `None`.
    pub async fn backend_metrics(&self, id: Option<&str>) -> Result<BackendMetrics, ClientError> {
        self.get_json(&with_id("/api/v1/metrics/backend", id)).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let what = format!("GET {}", strip_query(path));
        let (status, body) = self.call(Method::GET, path, Bytes::new(), &what).await?;
        if !status.is_success() {
            return Err(api_error(what, status, &body));
        }
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode { what, source })
    }

    async fn call_no_content(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(), ClientError> {
        let what = format!("{method} {}", strip_query(path));
        let (status, body) = self.call(method, path, body, &what).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(api_error(what, status, &body))
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        what: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let uri: hyper::Uri = hyperlocal::Uri::new(&self.sock, path).into();
        let mut builder = Request::builder().method(method).uri(uri);
        if !body.is_empty() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|source| ClientError::BuildRequest {
                what: what.to_string(),
                source,
            })?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|source| ClientError::Request {
                    what: what.to_string(),
                    sock: self.sock.clone(),
                    source,
                })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|source| ClientError::Body {
                    what: what.to_string(),
                    source,
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                what: what.to_string(),
                timeout: self.timeout,
            })?
    }
}

fn encode(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

fn with_id(path: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{path}?id={}", encode(id)),
        None => path.to_string(),
    }
}

fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// Keys whose string values in a nydusd configuration are secrets.
const SECRET_KEYS: &[&str] = &["auth", "password", "token", "secret", "key"];

/// `message` without the nydusd configuration `config` (when quoted whole) and without
/// any secret of it (string values of keys naming an auth, password, token, secret or
/// key, at any depth).
fn redact(message: &str, config: &str) -> String {
    let mut out = message.to_string();
    if config.len() > 2 && out.contains(config) {
        out = out.replace(config, "<nydusd configuration, not shown>");
    }
    fn secrets(v: &serde_json::Value, found: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let k = k.to_ascii_lowercase();
                    match v {
                        serde_json::Value::String(s)
                            if !s.is_empty() && SECRET_KEYS.iter().any(|w| k.contains(w)) =>
                        {
                            found.push(s.clone())
                        }
                        _ => secrets(v, found),
                    }
                }
            }
            serde_json::Value::Array(list) => list.iter().for_each(|v| secrets(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(config) {
        secrets(&v, &mut found);
    }
    // Longest first, so that a secret containing another is replaced whole.
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in found {
        out = out.replace(&s, "<redacted>");
    }
    out
}

fn api_error(what: String, status: StatusCode, body: &[u8]) -> ClientError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => (e.code, e.message),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let mut message: String = text.chars().take(MAX_QUOTED_BODY).collect();
            if message.is_empty() {
                message = status.canonical_reason().unwrap_or("no body").to_string();
            }
            (String::new(), message)
        }
    };
    ClientError::Api {
        what,
        status: status.as_u16(),
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountpoint_is_percent_encoded() {
        assert_eq!(encode("/rafs/c1/lowerdir"), "/rafs/c1/lowerdir");
        assert_eq!(encode("/a b&c=d?e#f+g"), "/a%20b%26c%3Dd%3Fe%23f%2Bg");
    }

    #[test]
    fn secrets_are_redacted_from_nydusd_messages() {
        let config = r#"{"device":{"backend":{"type":"registry","config":{"host":"r:5000","auth":"dXNlcjpzM2NyZXQ=","registry_token":"tok-123456"}}},"mode":"direct"}"#;
        let msg = "failed to mount: invalid auth dXNlcjpzM2NyZXQ= for r:5000 (token tok-123456)";
        let out = redact(msg, config);
        assert!(
            !out.contains("dXNlcjpzM2NyZXQ=") && !out.contains("tok-123456"),
            "{out}"
        );
        assert!(out.contains("r:5000"), "{out}");
        let out = redact(&format!("bad config {config}"), config);
        assert_eq!(out, "bad config <nydusd configuration, not shown>");
        assert_eq!(redact("plain", ""), "plain");
        assert_eq!(redact("plain", "not json"), "plain");
    }

    #[test]
    fn error_body_becomes_status_and_message() {
        let e = api_error(
            "POST /api/v1/mount".into(),
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"code":"UNDEFINED","message":"already mounted"}"#,
        );
        match &e {
            ClientError::Api {
                status,
                code,
                message,
                ..
            } => {
                assert_eq!(*status, 500);
                assert_eq!(code, "UNDEFINED");
                assert_eq!(message, "already mounted");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(e.status(), Some(500));
        assert!(e.to_string().contains("HTTP 500: already mounted"));
    }

    #[test]
    fn non_json_error_body_is_quoted() {
        let e = api_error("GET /x".into(), StatusCode::NOT_FOUND, b"nope");
        assert!(e.to_string().contains("HTTP 404: nope"), "{e}");
        let e = api_error("GET /x".into(), StatusCode::BAD_REQUEST, b"");
        assert!(e.to_string().contains("HTTP 400: Bad Request"), "{e}");
    }

    #[test]
    fn mount_request_json_and_debug() {
        let req = MountRequest::rafs("/b/image.boot", r#"{"auth":"c2VjcmV0"}"#)
            .with_prefetch_files(vec!["/bin/sh".into()]);
        let json: serde_json::Value = serde_json::to_value(&req).unwrap();
        assert_eq!(json["fs_type"], "rafs");
        assert_eq!(json["source"], "/b/image.boot");
        assert_eq!(json["prefetch_files"][0], "/bin/sh");
        let debug = format!("{req:?}");
        assert!(!debug.contains("c2VjcmV0"), "{debug}");

        let pt = MountRequest::passthrough(Path::new("/run/lazyvm/s/shared"));
        let json: serde_json::Value = serde_json::to_value(&pt).unwrap();
        assert_eq!(json["fs_type"], "passthrough_fs");
        assert_eq!(json["config"], "");
        assert!(json.get("prefetch_files").is_none());
        assert!(MountRequest::rafs("s", "c")
            .with_prefetch_files(vec![])
            .prefetch_files
            .is_none());
    }

    #[test]
    fn daemon_info_lists_mountpoints() {
        let info: DaemonInfo = serde_json::from_str(
            r#"{"id":null,"version":{"package_ver":"v2.2.0"},"state":"RUNNING",
                "backend_collection":{"/containers":{},"/rafs/c1/lowerdir":{}}}"#,
        )
        .unwrap();
        assert!(info.is_running());
        assert_eq!(info.version.package_ver, "v2.2.0");
        let mut mps = info.mountpoints();
        mps.sort();
        assert_eq!(mps, ["/containers", "/rafs/c1/lowerdir"]);
    }

    #[tokio::test]
    async fn invalid_mountpoint_sends_nothing() {
        let client = NydusClient::new("/nonexistent/api.sock");
        let err = client
            .mount("/rafs/../lowerdir", &MountRequest::rafs("s", "c"))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Mountpoint(_)), "{err:?}");
    }

    #[tokio::test]
    async fn missing_socket_is_a_request_error() {
        let client = NydusClient::new("/nonexistent/api.sock");
        let err = client.daemon_info().await.unwrap_err();
        assert!(matches!(err, ClientError::Request { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/api.sock"), "{err}");
    }
}
