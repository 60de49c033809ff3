//! Authentication and encryption of every gRPC path: the CLI and the TaskManagers calling the
//! JobManager, the JobManager calling the TaskManagers.
//!
//! Two independent layers, both configured by `security.*` ([`SecurityConfig`]):
//! - **The token** (`security.token`, or `WEIR_SECURITY_TOKEN`): a shared secret every caller
//!   sends as `authorization: Bearer <token>` metadata on every call ([`ClientAuth`]), and every
//!   server checks before the call reaches its service ([`TokenCheck`]). The check compares
//!   SHA-256 digests in constant time, so neither the token's bytes nor its length can be
//!   learnt from response times. A refusal is `UNAUTHENTICATED`, names `security.token` and
//!   never repeats what was sent. A server without a token accepts every call, with or
//!   without one.
//! - **TLS** (`security.ssl.internal.*`): servers present `cert`/`key` and require a client
//!   certificate that chains to `trust-cert` (mutual TLS); clients present the same pair and
//!   verify the server against `trust-cert`. A client verifies the name it dials — the host of
//!   `host:port`, an IP address included — so every certificate must name (as a subject
//!   alternative name) each address peers dial: the JobManager's `jobmanager.rpc.address`, each
//!   TaskManager's `taskmanager.host`.
//!
//! TLS without the token still lets any holder of a certificate signed by the trusted CA in;
//! the token without TLS travels in clear text. `docs/security.md` has the whole picture.

use std::net::SocketAddr;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};
use weir_core::config::keys;
use weir_core::settings::{SecurityConfig, TOKEN_ENV};

/// The metadata key the token travels in.
pub const AUTHORIZATION: &str = "authorization";
const BEARER: &str = "Bearer ";

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {key} = {path}: {source}")]
    ReadFile { key: &'static str, path: String, source: std::io::Error },
    #[error("{key} = {path} holds no {what} in PEM format")]
    NotPem { key: &'static str, path: String, what: &'static str },
    #[error("{} must be printable ASCII without spaces (it travels as gRPC metadata)", keys::SECURITY_TOKEN)]
    BadToken,
    #[error("bad gRPC address '{0}'")]
    Address(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: tonic::transport::Error },
    #[error("bad TLS setup ({}, {}, {}): {detail}", keys::SSL_INTERNAL_CERT, keys::SSL_INTERNAL_KEY, keys::SSL_INTERNAL_TRUST_CERT)]
    Tls { detail: String },
}

/// The server side of the token: a tonic interceptor that refuses calls without the cluster's
/// token. Built from a `None` token it lets every call through.
#[derive(Clone)]
pub struct TokenCheck {
    /// SHA-256 of the expected token.
    expected: Option<[u8; 32]>,
}

impl TokenCheck {
    pub fn new(security: &SecurityConfig) -> Self {
        Self { expected: security.token.as_deref().map(digest) }
    }

    /// Checks one call's metadata; the error never contains what was sent.
    pub fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let Some(expected) = &self.expected else { return Ok(()) };
        let sent = metadata.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix(BEARER));
        match sent {
            None => Err(Status::unauthenticated(format!(
                "this cluster requires a token: set {} (or the {TOKEN_ENV} environment variable) to the cluster's token",
                keys::SECURITY_TOKEN
            ))),
            Some(token) if constant_time_eq(&digest(token), expected) => Ok(()),
            Some(_) => {
                Err(Status::unauthenticated(format!("wrong token: {} (or {TOKEN_ENV}) differs from the cluster's", keys::SECURITY_TOKEN)))
            }
        }
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

/// The token is a secret: debug output never shows it, not even its digest.
impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCheck").field("required", &self.expected.is_some()).finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal without an early exit: the time taken does not depend on where the digests differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The client side of the token: adds it to every call. Without a token it adds nothing.
#[derive(Clone)]
pub struct ClientAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl ClientAuth {
    pub fn new(security: &SecurityConfig) -> Result<Self, SecurityError> {
        let header = match &security.token {
            Some(token) => {
                if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(SecurityError::BadToken);
                }
                let mut value = MetadataValue::try_from(format!("{BEARER}{token}")).map_err(|_| SecurityError::BadToken)?;
                // Keeps the value out of the HTTP/2 header table and out of debug output.
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Self { header })
    }
}

impl Interceptor for ClientAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.header {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth").field("token", &self.header.as_ref().map(|_| "<set>")).finish()
    }
}

/// What every Weir gRPC client talks through: a channel that adds the token to each call.
pub type GrpcChannel = InterceptedService<Channel, ClientAuth>;

/// How long a client waits to connect, and for each call.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

/// Everything a process needs to call Weir gRPC servers, read once at start (the PEM files
/// included, so a missing file fails the start, not the first call).
#[derive(Clone)]
pub struct Dialer {
    auth: ClientAuth,
    /// `None`: plain `http://`.
    tls: Option<ClientTlsConfig>,
}

impl Dialer {
    pub fn new(security: &SecurityConfig) -> Result<Self, SecurityError> {
        let tls = match &security.tls {
            Some(paths) => {
                let pems = Pems::read(paths)?;
                Some(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(pems.trust))
                        .identity(Identity::from_pem(pems.cert, pems.key)),
                )
            }
            None => None,
        };
        Ok(Self { auth: ClientAuth::new(security)?, tls })
    }

    /// No token, no TLS (unit tests, and processes configured so).
    pub fn plaintext() -> Self {
        Self { auth: ClientAuth { header: None }, tls: None }
    }

    /// The endpoint for `addr` (`host:port`, or a URL whose scheme must agree with the TLS
    /// setting). With TLS the server's certificate is verified against the host of `addr`.
    fn endpoint(&self, addr: &str, timeouts: Timeouts) -> Result<Endpoint, SecurityError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = match addr.split_once("://") {
            Some((given, _)) if given == scheme => addr.to_string(),
            Some(_) => return Err(SecurityError::Address(format!("{addr}: expected {scheme}:// with this TLS setting"))),
            None => format!("{scheme}://{addr}"),
        };
        let mut endpoint = Endpoint::from_shared(uri).map_err(|_| SecurityError::Address(addr.to_string()))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| SecurityError::Tls { detail: weir_core::error_chain(&e) })?;
        }
        Ok(endpoint.connect_timeout(timeouts.connect).timeout(timeouts.request))
    }

    /// Connects now: fails if the server is unreachable or the TLS handshake fails
    /// ([`SecurityError::Connect`]).
    pub async fn connect(&self, addr: &str, timeouts: Timeouts) -> Result<GrpcChannel, SecurityError> {
        let endpoint = self.endpoint(addr, timeouts)?;
        let channel = endpoint.connect().await.map_err(|source| SecurityError::Connect { addr: addr.to_string(), source })?;
        Ok(InterceptedService::new(channel, self.auth.clone()))
    }

    /// A channel that connects on its first call (and again after a connection is lost).
    pub fn connect_lazy(&self, addr: &str, timeouts: Timeouts) -> Result<GrpcChannel, SecurityError> {
        Ok(InterceptedService::new(self.endpoint(addr, timeouts)?.connect_lazy(), self.auth.clone()))
    }
}

/// The TLS identity holds the private key: debug output shows only what is configured.
impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").field("auth", &self.auth).field("tls", &self.tls.is_some()).finish()
    }
}

/// A server builder for `security`: with TLS it presents `cert`/`key` and requires clients to
/// present a certificate that chains to `trust-cert`. Wrap each service with
/// `with_interceptor(service, TokenCheck::new(security))`.
pub fn server(security: &SecurityConfig) -> Result<Server, SecurityError> {
    let builder = Server::builder();
    match &security.tls {
        Some(paths) => {
            let pems = Pems::read(paths)?;
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(pems.cert, pems.key))
                .client_ca_root(Certificate::from_pem(pems.trust))
                .timeout(Duration::from_secs(10));
            builder.tls_config(tls).map_err(|e| SecurityError::Tls { detail: weir_core::error_chain(&e) })
        }
        None => Ok(builder),
    }
}

/// Warns loudly when a server listens beyond loopback with no token: anyone who reaches the
/// port can then call it.
pub fn warn_if_open(role: &str, addr: SocketAddr, security: &SecurityConfig) {
    if security.token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "{role} listens on {addr} WITHOUT AUTHENTICATION: anyone who can reach this port can submit, cancel and inspect jobs \
             and run code as this process's user. Set {} (or {TOKEN_ENV}) on every process of the cluster, or bind a loopback \
             address. See docs/security.md.",
            keys::SECURITY_TOKEN
        );
    }
}

/// The PEM files of TLS, read and checked for content.
struct Pems {
    cert: Vec<u8>,
    key: Vec<u8>,
    trust: Vec<u8>,
}

impl Pems {
    fn read(paths: &weir_core::settings::TlsPaths) -> Result<Self, SecurityError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let read = |key: &'static str, path: &str| {
            std::fs::read(path).map_err(|source| SecurityError::ReadFile { key, path: path.to_string(), source })
        };
        let has_cert = |pem: &[u8]| CertificateDer::pem_slice_iter(pem).next().is_some_and(|c| c.is_ok());
        let cert = read(keys::SSL_INTERNAL_CERT, &paths.cert)?;
        if !has_cert(&cert) {
            return Err(SecurityError::NotPem { key: keys::SSL_INTERNAL_CERT, path: paths.cert.clone(), what: "certificate" });
        }
        let key = read(keys::SSL_INTERNAL_KEY, &paths.key)?;
        if PrivateKeyDer::from_pem_slice(&key).is_err() {
            return Err(SecurityError::NotPem { key: keys::SSL_INTERNAL_KEY, path: paths.key.clone(), what: "private key" });
        }
        let trust = read(keys::SSL_INTERNAL_TRUST_CERT, &paths.trust_cert)?;
        if !has_cert(&trust) {
            return Err(SecurityError::NotPem { key: keys::SSL_INTERNAL_TRUST_CERT, path: paths.trust_cert.clone(), what: "certificate" });
        }
        Ok(Self { cert, key, trust })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::settings::TlsPaths;

    fn with_token(token: Option<&str>) -> SecurityConfig {
        SecurityConfig { token: token.map(str::to_string), tls: None }
    }

    /// A request as the client side would send it.
    fn sent_by(token: Option<&str>) -> Request<()> {
        ClientAuth::new(&with_token(token)).unwrap().call(Request::new(())).unwrap()
    }

    #[test]
    fn the_right_token_passes() {
        let mut check = TokenCheck::new(&with_token(Some("s3cret-token")));
        assert!(check.call(sent_by(Some("s3cret-token"))).is_ok());
    }

    #[test]
    fn a_wrong_token_is_refused_without_echoing_either_token() {
        let mut check = TokenCheck::new(&with_token(Some("s3cret-token")));
        for wrong in ["s3cret-tokeN", "s3cret-token-longer", "guess-1", "zz"] {
            let status = check.call(sent_by(Some(wrong))).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().contains("security.token"), "{}", status.message());
            assert!(!status.message().contains("s3cret"), "{}", status.message());
            assert!(!status.message().contains(wrong), "{}", status.message());
        }
    }

    #[test]
    fn a_missing_token_is_refused_naming_the_key() {
        let mut check = TokenCheck::new(&with_token(Some("s3cret-token")));
        let status = check.call(sent_by(None)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("security.token") && status.message().contains(TOKEN_ENV), "{}", status.message());
        // A token that is not a bearer token counts as missing.
        let mut request = Request::new(());
        request.metadata_mut().insert(AUTHORIZATION, MetadataValue::from_static("s3cret-token"));
        assert_eq!(check.call(request).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_server_without_a_token_accepts_every_call() {
        let mut check = TokenCheck::new(&with_token(None));
        assert!(check.call(sent_by(None)).is_ok());
        assert!(check.call(sent_by(Some("anything"))).is_ok());
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let security = with_token(Some("s3cret-token"));
        let shown =
            format!("{:?} {:?} {:?}", TokenCheck::new(&security), ClientAuth::new(&security).unwrap(), Dialer::new(&security).unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!format!("{:?}", sent_by(Some("s3cret-token"))).contains("s3cret"));
    }

    #[test]
    fn a_token_that_cannot_travel_as_metadata_is_refused() {
        for bad in ["two words", "line\nbreak", "ünïcode", ""] {
            assert!(matches!(ClientAuth::new(&with_token(Some(bad))), Err(SecurityError::BadToken)), "{bad:?}");
        }
    }

    #[test]
    fn unreadable_or_empty_pem_files_are_named_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let missing = dir.path().join("missing.pem").display().to_string();
        let security = |cert: &str| SecurityConfig {
            token: None,
            tls: Some(TlsPaths { cert: cert.to_string(), key: cert.to_string(), trust_cert: cert.to_string() }),
        };
        let e = Dialer::new(&security(&missing)).unwrap_err().to_string();
        assert!(e.contains("security.ssl.internal.cert") && e.contains("missing.pem"), "{e}");
        let e = server(&security(&empty.display().to_string())).unwrap_err().to_string();
        assert!(e.contains("security.ssl.internal.cert") && e.contains("empty.pem") && e.contains("PEM"), "{e}");
    }

    /// A CA and a node certificate for `127.0.0.1`, as PEM files in `dir`.
    fn tls_files(dir: &std::path::Path) -> TlsPaths {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let node = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
        let path = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p.display().to_string()
        };
        TlsPaths { cert: path("node.pem", node.pem()), key: path("node.key", key.serialize_pem()), trust_cert: path("ca.pem", ca.pem()) }
    }

    #[test]
    fn tls_files_make_a_server_and_an_https_dialer_whose_debug_output_hides_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let security = SecurityConfig { token: Some("s3cret-token".into()), tls: Some(tls_files(dir.path())) };
        server(&security).unwrap();
        let dialer = Dialer::new(&security).unwrap();
        let t = Timeouts { connect: Duration::from_secs(1), request: Duration::from_secs(1) };
        assert_eq!(dialer.endpoint("127.0.0.1:6123", t).unwrap().uri().scheme_str(), Some("https"));
        assert!(matches!(dialer.endpoint("http://127.0.0.1:6123", t), Err(SecurityError::Address(_))));
        let shown = format!("{dialer:?}");
        assert!(!shown.contains("PRIVATE") && !shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn the_scheme_follows_the_tls_setting() {
        let t = Timeouts { connect: Duration::from_secs(1), request: Duration::from_secs(1) };
        let plain = Dialer::plaintext();
        for addr in ["127.0.0.1:6123", "http://127.0.0.1:6123"] {
            let uri = plain.endpoint(addr, t).unwrap().uri().clone();
            assert_eq!((uri.scheme_str(), uri.host(), uri.port_u16()), (Some("http"), Some("127.0.0.1"), Some(6123)));
        }
        assert!(matches!(plain.endpoint("https://127.0.0.1:6123", t), Err(SecurityError::Address(_))));
    }
}
