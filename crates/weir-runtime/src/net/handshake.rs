//! The data plane's handshake and transport security: who is at the other end of a new
//! connection, and whether it may join.
//!
//! ## Transport
//! With `security.ssl.internal.enabled`, every data connection runs TLS (rustls, ring) with
//! mutual authentication: the accepting side requires a client certificate that chains to
//! `security.ssl.internal.trust-cert`, and the dialing side checks the acceptor's certificate
//! against the same file, for the host of the address it dials (an IP address or a DNS name:
//! the certificate must name it). Each TaskManager uses one certificate and key
//! (`security.ssl.internal.cert` and `.key`) as client and as server. Without TLS the handshake
//! below runs on plain TCP.
//!
//! ## Handshake
//! Every frame of it is at most [`HANDSHAKE_MAX_FRAME`] bytes: until a peer is accepted, it
//! cannot make this side allocate more. The whole exchange has [`HANDSHAKE_TIMEOUT`].
//!
//! 1. The acceptor sends `CHALLENGE`: `u8 version | u8 auth | nonce[32]`, `auth` 1 when it
//!    has a token (`security.token`), and 32 random bytes from the system generator.
//! 2. The dialer sends `HELLO`: `u8 version | u8 auth | nonce[32] | mac[32] | tm id`, its own
//!    nonce, and with a token `mac` = HMAC-SHA256(token, `"weir-data-hello"` | acceptor nonce |
//!    dialer nonce | tm id) (no `mac` without a token). The token itself never travels.
//! 3. The acceptor checks the version, that both sides agree on using a token, the `mac` (in
//!    constant time), that the dialer's id is smaller than its own (only the smaller id dials)
//!    and that no connection from that peer is open; then sends `WELCOME`: `u8 version | u8
//!    auth | mac[32] | tm id`, with `mac` = HMAC-SHA256(token, `"weir-data-welcome"` | dialer
//!    nonce | acceptor nonce | tm id): the acceptor proves the token too, so a dialer never
//!    takes frames from a listener that merely sits at the address.
//! 4. The dialer checks that proof and that the id is the TaskManager it meant to reach.
//!
//! Either side that refuses sends `REFUSED` with the reason and closes, so both sides log why
//! (a TaskManager with a token and one without each say so). The reasons name TaskManagers,
//! never the token. A nonce is never reused, so a recorded `HELLO` cannot be replayed, and the
//! labels keep a `HELLO` proof from passing for a `WELCOME` one.
//!
//! Without a token the ids are claimed, not proven: anyone who reaches the data port may
//! connect as a TaskManager that has no connection open yet (see `docs/security.md`).

use super::frame::{put_frame, read_frame, FrameError, CHALLENGE, HANDSHAKE_MAX_FRAME, HELLO, REFUSED, WELCOME};
use bytes::BytesMut;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use weir_core::config::keys;
use weir_core::settings::SecurityConfig;

/// The handshake's version byte; a peer with another version is refused by name. 2: `BUFFER`
/// frames carry the sender's backlog (floating credits). 3: `BUFFER_SIZE` frames (buffer
/// debloating).
pub const PROTOCOL_VERSION: u8 = 3;
/// How long a new connection may take to complete TLS and the handshake, on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a nonce and of an HMAC-SHA256 tag.
const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
/// Longest TaskManager id a `HELLO` or `WELCOME` may carry.
const MAX_ID_LEN: usize = 255;
/// Domain separation of the two proofs.
const HELLO_LABEL: &[u8] = b"weir-data-hello";
const WELCOME_LABEL: &[u8] = b"weir-data-welcome";

/// Why the data plane's security settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A PEM file of `security.ssl.internal.*` is missing, unreadable or holds nothing usable.
    #[error("cannot read {key} = '{path}': {reason}")]
    Pem { key: &'static str, path: String, reason: String },
    /// The certificate, key and trust certificate do not make a TLS configuration (a key that
    /// does not match the certificate, for instance).
    #[error("cannot set up internal TLS from {cert} and {key}: {reason}", cert = keys::SSL_INTERNAL_CERT, key = keys::SSL_INTERNAL_KEY)]
    Tls { reason: String },
}

/// How the data plane authenticates and encrypts its connections: built once per TaskManager
/// from `security.*`, shared by every connection.
pub struct NetSecurity {
    /// HMAC key from `security.token`; `None`: connections are not authenticated.
    token: Option<hmac::Key>,
    /// Client and server configurations of internal TLS; `None`: plain TCP.
    tls: Option<Tls>,
}

struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for NetSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetSecurity").field("token", &self.token.is_some()).field("tls", &self.tls.is_some()).finish()
    }
}

impl NetSecurity {
    /// No token and no TLS: what a cluster on loopback runs with by default.
    pub fn none() -> Self {
        Self { token: None, tls: None }
    }

    /// The data plane's part of `security.*`: the token, and with TLS enabled the PEM files,
    /// read now (an error names the key and the file).
    pub fn from_config(c: &SecurityConfig) -> Result<Self, super::NetError> {
        let token = c.token.as_ref().map(|t| hmac::Key::new(hmac::HMAC_SHA256, t.as_bytes()));
        let tls = c.tls.as_ref().map(load_tls).transpose()?;
        Ok(Self { token, tls })
    }

    /// Whether connections must prove `security.token`.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The dialer's transport: TLS to `addr`'s host if enabled, else the TCP socket itself.
    pub(super) async fn client(&self, tcp: TcpStream, addr: &str) -> io::Result<Connection> {
        match &self.tls {
            None => Ok(Connection::Plain(tcp)),
            Some(tls) => {
                let name = server_name(addr)?;
                let stream = tls.connector.connect(name, tcp).await?;
                Ok(Connection::Tls(Box::new(stream.into())))
            }
        }
    }

    /// The acceptor's transport: TLS requiring a trusted client certificate if enabled.
    pub(super) async fn server(&self, tcp: TcpStream) -> io::Result<Connection> {
        match &self.tls {
            None => Ok(Connection::Plain(tcp)),
            Some(tls) => Ok(Connection::Tls(Box::new(tls.acceptor.accept(tcp).await?.into()))),
        }
    }

    fn mode(&self) -> u8 {
        u8::from(self.token.is_some())
    }

    /// The proof of `label | first | second | id`, empty without a token.
    fn proof(&self, label: &[u8], first: &[u8], second: &[u8], id: &str) -> Vec<u8> {
        let Some(key) = &self.token else { return Vec::new() };
        let mut ctx = hmac::Context::with_key(key);
        for part in [label, first, second, id.as_bytes()] {
            ctx.update(part);
        }
        ctx.sign().as_ref().to_vec()
    }

    /// Whether `mac` proves the token for `label | first | second | id`, compared in constant
    /// time. Always true without a token.
    fn verify(&self, mac: &[u8], label: &[u8], first: &[u8], second: &[u8], id: &str) -> bool {
        let Some(key) = &self.token else { return true };
        let msg = [label, first, second, id.as_bytes()].concat();
        hmac::verify(key, &msg, mac).is_ok()
    }
}

/// Reads the three PEM files and builds the client and server configurations.
fn load_tls(paths: &weir_core::settings::TlsPaths) -> Result<Tls, SecurityError> {
    let pem_err = |key: &'static str, path: &str| {
        let path = path.to_string();
        move |e: rustls_pki_types::pem::Error| SecurityError::Pem { key, path, reason: e.to_string() }
    };
    let read_certs = |key: &'static str, path: &str| -> Result<Vec<CertificateDer<'static>>, SecurityError> {
        let certs =
            CertificateDer::pem_file_iter(path).map_err(pem_err(key, path))?.collect::<Result<Vec<_>, _>>().map_err(pem_err(key, path))?;
        if certs.is_empty() {
            return Err(SecurityError::Pem { key, path: path.to_string(), reason: "no certificate in the file".into() });
        }
        Ok(certs)
    };
    let certs = read_certs(keys::SSL_INTERNAL_CERT, &paths.cert)?;
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(pem_err(keys::SSL_INTERNAL_KEY, &paths.key))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(keys::SSL_INTERNAL_TRUST_CERT, &paths.trust_cert)? {
        roots.add(ca).map_err(|e| SecurityError::Pem {
            key: keys::SSL_INTERNAL_TRUST_CERT,
            path: paths.trust_cert.clone(),
            reason: e.to_string(),
        })?;
    }
    let roots = Arc::new(roots);
    let tls = |e: &dyn std::fmt::Display| SecurityError::Tls { reason: e.to_string() };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().map_err(|e| tls(&e))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| tls(&e))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| tls(&e))?;
    Ok(Tls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), connector: tokio_rustls::TlsConnector::from(Arc::new(client)) })
}

/// The name the acceptor's certificate must carry: the host of `addr` (`host:port`), an IP
/// address or a DNS name.
fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(ServerName::IpAddress(sa.ip().into()));
    }
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("'{host}' is no host name for TLS: {e}")))
}

/// One data connection after its transport handshake: plain TCP, or TLS over it.
pub(super) enum Connection {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connection::Plain(_) => "Connection::Plain",
            Connection::Tls(_) => "Connection::Tls",
        })
    }
}

/// The read half of a connection, for the link's reader.
pub(super) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a TLS connection, for the link's writer.
pub(super) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// The write half of a connection.
pub(super) enum WriteSide {
    /// A plain TCP socket: written without blocking (`try_write_vectored`) by whichever thread
    /// has frames to send, under the link's wire lock.
    Plain(tokio::net::tcp::OwnedWriteHalf),
    /// A TLS stream: only the link's writer task writes it.
    Tls(WriteHalf),
}

impl Connection {
    /// Splits for one reader task and the writers: a TCP socket without a lock between the
    /// halves; a TLS stream (one session state) with tokio's split.
    pub(super) fn into_split(self) -> (ReadHalf, WriteSide) {
        match self {
            Connection::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                (Box::new(r), WriteSide::Plain(w))
            }
            Connection::Tls(tls) => {
                let (r, w) = tokio::io::split(*tls);
                (Box::new(r), WriteSide::Tls(Box::new(w)))
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_flush(cx),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The connection failed or timed out: worth another attempt.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// One side refused the other (its reason): another attempt would be refused again.
    #[error("{0}")]
    Refused(String),
}

impl HandshakeError {
    /// Whether a new attempt may succeed: not after a refusal, nor after a TLS failure (an
    /// untrusted certificate stays untrusted).
    pub fn is_transient(&self) -> bool {
        matches!(self, HandshakeError::Io(e) if e.kind() != io::ErrorKind::InvalidData)
    }
}

impl From<FrameError> for HandshakeError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => HandshakeError::Io(e),
            FrameError::Closed => HandshakeError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the handshake")),
            other => HandshakeError::Refused(format!("bad handshake: {other}")),
        }
    }
}

fn random_nonce() -> io::Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| io::Error::other("the system random generator failed"))?;
    Ok(nonce)
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, kind: u8, body: &[u8]) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(5 + body.len());
    put_frame(&mut buf, kind, body);
    s.write_all(&buf).await?;
    s.flush().await
}

/// Sends `REFUSED` with `reason` (best effort: the peer may be gone) and returns the refusal.
async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, reason: String) -> HandshakeError {
    let _ = send(s, REFUSED, reason.as_bytes()).await;
    let _ = s.shutdown().await;
    HandshakeError::Refused(reason)
}

/// What the peer's `REFUSED` says, or a bad handshake if the frame is of another kind.
fn refusal(kind: u8, body: &[u8], expected: &str) -> HandshakeError {
    if kind == REFUSED {
        HandshakeError::Refused(format!("refused by the peer: {}", String::from_utf8_lossy(body)))
    } else {
        HandshakeError::Refused(format!("bad handshake: frame kind {kind} where {expected} was expected"))
    }
}

/// A TaskManager id as `HELLO` and `WELCOME` carry it: UTF-8, 1 to 255 bytes.
fn parse_id(bytes: &[u8]) -> Result<&str, String> {
    match std::str::from_utf8(bytes) {
        Ok(id) if !id.is_empty() && id.len() <= MAX_ID_LEN => Ok(id),
        _ => Err(format!("bad handshake: a TaskManager id must be 1 to {MAX_ID_LEN} bytes of UTF-8")),
    }
}

/// Why the two sides' token settings do not agree, from the point of view of `me`; `None` if
/// they do. `peer_mode` is the peer's `auth` byte.
fn mode_mismatch(sec: &NetSecurity, me: &str, peer: &str, peer_mode: u8) -> Option<String> {
    match (sec.has_token(), peer_mode) {
        (true, 0) => Some(format!(
            "TaskManager {me} requires a token ({}) and TaskManager {peer} has none; set the same token on every process",
            keys::SECURITY_TOKEN
        )),
        (false, 1) => Some(format!(
            "TaskManager {peer} requires a token ({}) and TaskManager {me} has none; set the same token on every process",
            keys::SECURITY_TOKEN
        )),
        (_, 0 | 1) => None,
        (_, other) => Some(format!("bad handshake: unknown authentication mode {other}")),
    }
}

/// The accepting side's handshake on a new connection from `remote`. `admit` gets the proven
/// (or, without a token, claimed) peer id and may refuse it with a reason. Returns the peer id.
pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    sec: &NetSecurity,
    me: &str,
    admit: impl FnOnce(&str) -> Result<(), String>,
) -> Result<String, HandshakeError> {
    let nonce = random_nonce()?;
    let mut challenge = vec![PROTOCOL_VERSION, sec.mode()];
    challenge.extend_from_slice(&nonce);
    send(s, CHALLENGE, &challenge).await?;

    let (kind, body) = read_frame(s, HANDSHAKE_MAX_FRAME).await?;
    if kind != HELLO {
        return Err(refusal(kind, &body, "HELLO"));
    }
    let (version, mode) = match body.get(..2) {
        Some(&[v, m]) => (v, m),
        _ => return Err(refuse(s, "bad handshake: HELLO too short".into()).await),
    };
    if version != PROTOCOL_VERSION {
        return Err(refuse(s, format!("data protocol version {version}, TaskManager {me} speaks {PROTOCOL_VERSION}")).await);
    }
    let mac_len = if mode == 1 { MAC_LEN } else { 0 };
    let Some(rest) = body.get(2..) else { unreachable!("checked above") };
    if rest.len() < NONCE_LEN + mac_len {
        return Err(refuse(s, "bad handshake: HELLO too short".into()).await);
    }
    let (peer_nonce, rest) = rest.split_at(NONCE_LEN);
    let (mac, id) = rest.split_at(mac_len);
    let peer = match parse_id(id) {
        Ok(peer) => peer.to_string(),
        Err(reason) => return Err(refuse(s, reason).await),
    };
    if let Some(reason) = mode_mismatch(sec, me, &peer, mode) {
        return Err(refuse(s, reason).await);
    }
    if !sec.verify(mac, HELLO_LABEL, &nonce, peer_nonce, &peer) {
        let reason = format!("TaskManager {peer} did not prove the token ({} differs)", keys::SECURITY_TOKEN);
        return Err(refuse(s, reason).await);
    }
    if let Err(reason) = admit(&peer) {
        return Err(refuse(s, reason).await);
    }
    let mut welcome = vec![PROTOCOL_VERSION, sec.mode()];
    welcome.extend(sec.proof(WELCOME_LABEL, peer_nonce, &nonce, me));
    welcome.extend_from_slice(me.as_bytes());
    send(s, WELCOME, &welcome).await?;
    Ok(peer)
}

/// The dialing side's handshake with `peer`, the TaskManager it meant to reach.
pub(super) async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    sec: &NetSecurity,
    me: &str,
    peer: &str,
) -> Result<(), HandshakeError> {
    let (kind, body) = read_frame(s, HANDSHAKE_MAX_FRAME).await?;
    if kind != CHALLENGE {
        return Err(refusal(kind, &body, "CHALLENGE"));
    }
    let (version, mode, peer_nonce) = match body.as_ref() {
        [v, m, nonce @ ..] if nonce.len() == NONCE_LEN => (*v, *m, nonce),
        _ => return Err(refuse(s, "bad handshake: CHALLENGE of the wrong length".into()).await),
    };
    if version != PROTOCOL_VERSION {
        return Err(refuse(s, format!("data protocol version {version}, TaskManager {me} speaks {PROTOCOL_VERSION}")).await);
    }
    if let Some(reason) = mode_mismatch(sec, me, peer, mode) {
        return Err(refuse(s, reason).await);
    }
    let nonce = random_nonce()?;
    let mut hello = vec![PROTOCOL_VERSION, sec.mode()];
    hello.extend_from_slice(&nonce);
    hello.extend(sec.proof(HELLO_LABEL, peer_nonce, &nonce, me));
    hello.extend_from_slice(me.as_bytes());
    send(s, HELLO, &hello).await?;

    let (kind, body) = read_frame(s, HANDSHAKE_MAX_FRAME).await?;
    if kind != WELCOME {
        return Err(refusal(kind, &body, "WELCOME"));
    }
    let mac_len = if sec.has_token() { MAC_LEN } else { 0 };
    let (mac, id) = match body.as_ref() {
        [v, m, rest @ ..] if *v == PROTOCOL_VERSION && *m == sec.mode() && rest.len() > mac_len => rest.split_at(mac_len),
        _ => return Err(refuse(s, "bad handshake: malformed WELCOME".into()).await),
    };
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(reason) => return Err(refuse(s, reason).await),
    };
    if !sec.verify(mac, WELCOME_LABEL, &nonce, peer_nonce, id) {
        let reason = format!("TaskManager {id} did not prove the token ({} differs)", keys::SECURITY_TOKEN);
        return Err(refuse(s, reason).await);
    }
    if id != peer {
        return Err(refuse(s, format!("reached TaskManager {id} where TaskManager {peer} was expected")).await);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(token: &str) -> NetSecurity {
        NetSecurity::from_config(&SecurityConfig { token: Some(token.into()), tls: None }).unwrap()
    }

    /// Runs both sides over an in-memory pipe.
    async fn handshake(dialer: &NetSecurity, acceptor: &NetSecurity) -> (Result<(), HandshakeError>, Result<String, HandshakeError>) {
        let (mut d, mut a) = tokio::io::duplex(4096);
        tokio::join!(dial(&mut d, dialer, "tm-a", "tm-b"), accept(&mut a, acceptor, "tm-b", |_| Ok(())))
    }

    #[tokio::test]
    async fn the_same_token_on_both_sides_is_accepted_both_ways() {
        let (d, a) = handshake(&with_token("s3cret"), &with_token("s3cret")).await;
        d.unwrap();
        assert_eq!(a.unwrap(), "tm-a");
        let (d, a) = handshake(&NetSecurity::none(), &NetSecurity::none()).await;
        d.unwrap();
        assert_eq!(a.unwrap(), "tm-a");
    }

    #[tokio::test]
    async fn a_different_token_is_refused_without_revealing_it() {
        let (d, a) = handshake(&with_token("wrong"), &with_token("s3cret")).await;
        let (d, a) = (d.unwrap_err().to_string(), a.unwrap_err().to_string());
        assert!(a.contains("tm-a did not prove the token"), "{a}");
        assert!(d.contains("refused by the peer") && d.contains("did not prove the token"), "{d}");
        assert!(!a.contains("s3cret") && !d.contains("s3cret") && !d.contains("wrong"));
    }

    #[tokio::test]
    async fn a_token_on_one_side_only_is_a_clear_error_on_both() {
        for (dialer, acceptor, needs) in
            [(NetSecurity::none(), with_token("t"), "tm-b requires"), (with_token("t"), NetSecurity::none(), "tm-a requires")]
        {
            let (d, a) = handshake(&dialer, &acceptor).await;
            let (d, a) = (d.unwrap_err().to_string(), a.unwrap_err().to_string());
            assert!(d.contains(needs) && d.contains("security.token"), "{d}");
            assert!(a.contains(needs) && a.contains("security.token"), "{a}");
        }
    }

    #[tokio::test]
    async fn an_acceptor_that_is_not_the_expected_taskmanager_is_refused() {
        let (mut d, mut a) = tokio::io::duplex(4096);
        let sec = with_token("t");
        let (d, _) = tokio::join!(dial(&mut d, &sec, "tm-a", "tm-c"), accept(&mut a, &sec, "tm-b", |_| Ok(())));
        assert!(d.unwrap_err().to_string().contains("reached TaskManager tm-b where TaskManager tm-c was expected"));
    }

    /// A `HELLO` recorded from a good handshake and replayed on a new connection fails: the
    /// acceptor's nonce differs.
    #[tokio::test]
    async fn a_replayed_hello_is_refused() {
        let sec = with_token("t");
        // Capture a genuine HELLO by acting as the acceptor by hand.
        let nonce = [7u8; NONCE_LEN];
        let mut challenge = vec![PROTOCOL_VERSION, 1];
        challenge.extend_from_slice(&nonce);
        let (mut d, mut a) = tokio::io::duplex(4096);
        send(&mut a, CHALLENGE, &challenge).await.unwrap();
        let dialer = tokio::spawn(async move { dial(&mut d, &with_token("t"), "tm-a", "tm-b").await });
        let (kind, hello) = read_frame(&mut a, HANDSHAKE_MAX_FRAME).await.unwrap();
        assert_eq!(kind, HELLO);
        drop(a);
        let _ = dialer.await;
        // Replay it against a real acceptor.
        let (mut d, mut a) = tokio::io::duplex(4096);
        let acceptor = tokio::spawn(async move { accept(&mut a, &sec, "tm-b", |_| Ok(())).await });
        read_frame(&mut d, HANDSHAKE_MAX_FRAME).await.unwrap();
        send(&mut d, HELLO, &hello).await.unwrap();
        let err = acceptor.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("did not prove the token"), "{err}");
    }

    #[tokio::test]
    async fn admission_may_refuse_a_proven_peer() {
        let (mut d, mut a) = tokio::io::duplex(4096);
        let sec = NetSecurity::none();
        let (d, a) =
            tokio::join!(dial(&mut d, &sec, "tm-a", "tm-b"), accept(&mut a, &sec, "tm-b", |p| Err(format!("{p} is already connected"))));
        assert!(d.unwrap_err().to_string().contains("refused by the peer: tm-a is already connected"));
        assert!(a.is_err());
    }

    #[test]
    fn server_names_come_from_the_dialed_host() {
        assert!(matches!(server_name("127.0.0.1:6121").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("[::1]:6121").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("tm-3.weir.svc:6121").unwrap(), ServerName::DnsName(_)));
    }

    #[test]
    fn unreadable_pem_files_are_named_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem").display().to_string();
        let paths = |cert: &str| weir_core::settings::TlsPaths { cert: cert.into(), key: missing.clone(), trust_cert: missing.clone() };
        let err = NetSecurity::from_config(&SecurityConfig { token: None, tls: Some(paths(&missing)) }).unwrap_err().to_string();
        assert!(err.contains("security.ssl.internal.cert") && err.contains("missing.pem"), "{err}");
        let empty = empty.display().to_string();
        let err = NetSecurity::from_config(&SecurityConfig { token: None, tls: Some(paths(&empty)) }).unwrap_err().to_string();
        assert!(err.contains("security.ssl.internal.cert") && err.contains("no certificate"), "{err}");
    }
}
