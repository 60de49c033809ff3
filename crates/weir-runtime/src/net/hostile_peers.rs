//! Tests of the data plane against peers that are not what they claim, or that break the
//! protocol: oversized and malformed frames, frames for channels they do not own, missing or
//! wrong tokens, untrusted certificates. Each checks that the offending connection is closed
//! and that the real links keep delivering.

use super::frame::{put_frame_header, ANNOUNCE, BUFFER, BUFFER_SIZE, CREDIT, EVENT, FRAME_OVERHEAD, SCHEMA};
use super::handshake::{self, Connection, HandshakeError};
use super::*;
use crate::gate::GatePoll;
use arrow_array::{Int64Array, RecordBatch};
use std::time::Instant;
use tokio::io::AsyncReadExt;
use weir_core::settings::{SecurityConfig, TlsPaths};

const DEADLINE: Duration = Duration::from_secs(30);

fn batch(v: i64) -> Item {
    Item::Buffer(RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![v])) as _)]).unwrap())
}

/// A one-row batch as a `BUFFER` frame's body after the channel id (no backlog), and the
/// `SCHEMA` frame body it needs.
fn wire_buffer(v: i64) -> (Bytes, Bytes) {
    let batch = RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![v])) as _)]).unwrap();
    let encoded = crate::buffer::BatchEncoder::default().encode(&batch).unwrap();
    let mut body = vec![0u8; frame::BUFFER_PREFIX];
    body.extend_from_slice(&encoded.contiguous());
    (crate::buffer::schema_message(&batch.schema()).unwrap(), Bytes::from(body))
}

fn network() -> NetworkConfig {
    NetworkConfig {
        segment_size: 32 << 10,
        buffers_per_channel: 4,
        floating_buffers_per_gate: 0,
        sender_queue_buffers: 8,
        buffer_timeout: Duration::from_millis(10),
        memory_max: 1 << 30,
        debloat: None,
    }
}

async fn start(id: &str, security: &SecurityConfig) -> Arc<NetworkEnvironment> {
    NetworkEnvironment::start(id, "127.0.0.1:0", &network(), NetSecurity::from_config(security).unwrap()).await.unwrap()
}

fn plain() -> SecurityConfig {
    SecurityConfig { token: None, tls: None }
}

fn token(t: &str) -> SecurityConfig {
    SecurityConfig { token: Some(t.into()), tls: None }
}

/// A channel from `from` to `to` (4 credits), registered on both ends.
struct Channel {
    gate: Arc<InputGate>,
    sub: Arc<RemoteSubpartition>,
}

fn channel(from: &Arc<NetworkEnvironment>, to: &Arc<NetworkEnvironment>, id: ChannelId) -> Channel {
    let from_addr = from.local_addr().to_string();
    let credits = to.credit_return(vec![Some((id, from.tm_id().into(), from_addr.clone()))]);
    let gate = Arc::new(InputGate::new(4, vec![Some(credits)]));
    to.register_input(id, gate.clone(), 0, from.tm_id(), &from_addr);
    let sub = from.register_output(id, to.tm_id(), &to.local_addr().to_string());
    Channel { gate, sub }
}

impl Channel {
    /// Sends `values` and checks they arrive, in order, with the channel still open after them.
    async fn delivers(&self, values: std::ops::Range<i64>) {
        let (sub, gate) = (self.sub.clone(), self.gate.clone());
        let expected: Vec<i64> = values.clone().collect();
        let got = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            for v in values {
                sub.push_blocking(batch(v)).unwrap();
                match gate.poll(Some(Instant::now() + DEADLINE)) {
                    GatePoll::Item(_, Item::Encoded(encoded)) => {
                        let b = encoded.decode().unwrap();
                        got.push(b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0));
                    }
                    other => panic!("expected buffer {v}, got {other:?}"),
                }
            }
            assert!(matches!(gate.try_poll(true), GatePoll::Timeout), "nothing else arrived: no forged item, no end");
            got
        })
        .await
        .unwrap();
        assert_eq!(got, expected);
    }
}

/// Connects to `env` as TaskManager `me` and passes the handshake with `security`.
async fn intruder(env: &NetworkEnvironment, me: &str, security: &SecurityConfig) -> Result<Connection, HandshakeError> {
    let sec = NetSecurity::from_config(security).unwrap();
    let addr = env.local_addr().to_string();
    let tcp = TcpStream::connect(&addr).await?;
    let mut conn = sec.client(tcp, &addr).await?;
    handshake::dial(&mut conn, &sec, me, env.tm_id()).await?;
    Ok(conn)
}

async fn send_frame(conn: &mut Connection, kind: u8, id: &ChannelId, body: &[u8]) {
    let mut buf = BytesMut::new();
    put_frame_header(&mut buf, kind, Some(id), body.len());
    buf.extend_from_slice(body);
    // The peer may already have closed: what matters is what it does next.
    let _ = conn.write_all(&buf).await;
    let _ = conn.flush().await;
}

/// The peer closes `conn` soon: a read ends (0 bytes) or fails within the deadline.
async fn assert_closed(conn: &mut Connection) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was not closed");
}

fn id(job: u128) -> ChannelId {
    ChannelId { job, attempt: 0, edge: 0, from: 0, to: 0 }
}

/// A header announcing more than the limit closes the connection at once (nothing is allocated
/// for it), before and after the handshake; the environment keeps serving its real link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_the_connection_and_others_keep_serving() {
    let a = start("tm-a", &plain()).await;
    let b = start("tm-b", &plain()).await;
    let ch = channel(&a, &b, id(1));
    ch.delivers(0..2).await;

    // After the handshake: 4 connections announcing 200 MiB each.
    let mut conns = Vec::new();
    for i in 0..4 {
        let mut conn = intruder(&b, &format!("tm-0{i}"), &plain()).await.unwrap();
        conn.write_all(&(200u32 << 20).to_be_bytes()).await.unwrap();
        conn.write_all(&[BUFFER]).await.unwrap();
        conns.push(conn);
    }
    // Just above the limit.
    let mut conn = intruder(&b, "tm-05", &plain()).await.unwrap();
    conn.write_all(&((b.max_buffer + FRAME_OVERHEAD + 1) as u32).to_be_bytes()).await.unwrap();
    conns.push(conn);
    for conn in &mut conns {
        assert_closed(conn).await;
    }

    // Before it: a HELLO of 100 MiB.
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    raw.write_all(&(100u32 << 20).to_be_bytes()).await.unwrap();
    raw.write_all(&[frame::HELLO]).await.unwrap();
    let mut conn = Connection::Plain(raw);
    assert_closed(&mut conn).await;

    ch.delivers(2..5).await;
}

/// An end of partition or a buffer forged for a channel by a TaskManager that does not feed it
/// is refused (its connection closes) and the real channel keeps delivering, unfinished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_for_a_channel_from_a_peer_that_does_not_feed_it_are_refused() {
    let a = start("tm-a", &plain()).await;
    let b = start("tm-b", &plain()).await;
    let ch = channel(&a, &b, id(2));
    ch.delivers(0..2).await;

    let forged = [
        (EVENT, Event::EndOfPartition.encode()),
        (frame::PRIORITY_EVENT, Event::CancelCheckpoint(1).encode()),
        (SCHEMA, wire_buffer(-1).0),
        (BUFFER, wire_buffer(-1).1),
    ];
    for (kind, body) in forged {
        let mut conn = intruder(&b, "tm-0", &plain()).await.unwrap();
        send_frame(&mut conn, kind, &id(2), &body).await;
        assert_closed(&mut conn).await;
    }
    ch.delivers(2..4).await;
}

/// `ANNOUNCE`, `CREDIT` and `BUFFER_SIZE` for a sending end are taken only from the TaskManager it
/// sends to: forged credits neither open the channel nor let data past the receiver's credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_for_a_channel_from_a_peer_that_does_not_consume_it_are_refused() {
    let a = start("tm-a", &plain()).await;
    let b = start("tm-b", &plain()).await;
    let ch = channel(&a, &b, id(3));
    ch.delivers(0..2).await;
    for kind in [ANNOUNCE, CREDIT, BUFFER_SIZE] {
        let mut conn = intruder(&a, "tm-0", &plain()).await.unwrap();
        send_frame(&mut conn, kind, &id(3), &1000u32.to_be_bytes()).await;
        assert_closed(&mut conn).await;
    }
    assert_eq!(ch.sub.state.lock().credits, 4, "the forged credits were not granted");
    assert_eq!(ch.sub.buffer_size(), None, "nor the forged buffer size");
    ch.delivers(2..6).await;
}

/// Even the TaskManager that feeds a channel may not send beyond its credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffers_beyond_the_credits_granted_close_the_connection() {
    let b = start("tm-b", &plain()).await;
    let gate = Arc::new(InputGate::new(1, vec![None]));
    b.register_input(id(4), gate.clone(), 0, "tm-0", "127.0.0.1:1");
    let mut conn = intruder(&b, "tm-0", &plain()).await.unwrap();
    let (schema, body) = wire_buffer(1);
    send_frame(&mut conn, SCHEMA, &id(4), &schema).await;
    send_frame(&mut conn, BUFFER, &id(4), &body).await;
    send_frame(&mut conn, BUFFER, &id(4), &body).await;
    assert_closed(&mut conn).await;
    assert!(matches!(gate.try_poll(true), GatePoll::Failed(reason) if reason.contains("tm-0") && reason.contains("credits")));
}

/// A buffer needs its channel's schema first, and a schema frame must hold exactly one schema
/// message: otherwise the connection closes and the channel's gate fails, naming the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_before_its_schema_or_a_malformed_schema_closes_the_connection() {
    let b = start("tm-b", &plain()).await;
    let (schema, body) = wire_buffer(1);
    let mut trailing = schema.to_vec();
    trailing.extend_from_slice(&[0; 8]);
    let cases: [(u8, &[u8], &str); 3] =
        [(BUFFER, &body, "before its schema"), (SCHEMA, &schema[..schema.len() - 1], "tm-0"), (SCHEMA, &trailing, "tm-0")];
    for (i, (kind, bytes, reason)) in cases.into_iter().enumerate() {
        let gate = Arc::new(InputGate::new(1, vec![None]));
        let channel = id(40 + i as u128);
        b.register_input(channel, gate.clone(), 0, "tm-0", "127.0.0.1:1");
        let mut conn = intruder(&b, "tm-0", &plain()).await.unwrap();
        send_frame(&mut conn, kind, &channel, bytes).await;
        assert_closed(&mut conn).await;
        let deadline = Instant::now() + DEADLINE;
        loop {
            match gate.try_poll(true) {
                GatePoll::Failed(r) => {
                    assert!(r.contains(reason), "case {i}: {r}");
                    break;
                }
                _ => assert!(Instant::now() < deadline, "case {i}: the gate did not fail"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Unknown kinds, truncated channel ids, bodies that do not parse: each closes only its own
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() {
    let a = start("tm-a", &plain()).await;
    let b = start("tm-b", &plain()).await;
    let ch = channel(&a, &b, id(5));
    let malformed: [&[u8]; 5] = [
        &[0, 0, 0, 1, 42],             // unknown kind, no body
        &[0, 0, 0, 4, EVENT, 0, 0, 0], // channel id cut short
        &[0, 0, 0, 0],                 // empty frame
        &[0, 0, 0, 1, frame::HELLO],   // a second HELLO
        &[0, 0, 0, 2, CREDIT, 9],      // credit without channel id
    ];
    for bytes in malformed {
        let mut conn = intruder(&b, "tm-0", &plain()).await.unwrap();
        conn.write_all(bytes).await.unwrap();
        assert_closed(&mut conn).await;
    }
    for (kind, body) in [(EVENT, vec![9u8]), (CREDIT, vec![0, 1]), (ANNOUNCE, vec![])] {
        let mut conn = intruder(&b, "tm-0", &plain()).await.unwrap();
        send_frame(&mut conn, kind, &id(5), &body).await;
        assert_closed(&mut conn).await;
    }
    ch.delivers(0..3).await;
}

/// With a token on both sides, channels work; a peer without it, or with another one, is
/// refused at the handshake and never reaches a channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_admits_only_peers_that_prove_it() {
    let a = start("tm-a", &token("s3cret")).await;
    let b = start("tm-b", &token("s3cret")).await;
    let ch = channel(&a, &b, id(6));
    ch.delivers(0..2).await;

    let err = intruder(&b, "tm-0", &plain()).await.unwrap_err().to_string();
    assert!(err.contains("requires a token") && err.contains("security.token"), "{err}");
    let err = intruder(&b, "tm-0", &token("guess")).await.unwrap_err().to_string();
    assert!(err.contains("did not prove the token") && !err.contains("s3cret"), "{err}");
    ch.delivers(2..4).await;
}

/// A TaskManager with a token and one without cannot connect, and the channel between them
/// fails with a reason that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_on_one_taskmanager_only_fails_its_channels_with_a_clear_reason() {
    for (sa, sb) in [(token("s3cret"), plain()), (plain(), token("s3cret"))] {
        let a = start("tm-a", &sa).await;
        let b = start("tm-b", &sb).await;
        let sub = a.register_output(id(7), "tm-b", &b.local_addr().to_string());
        let err = tokio::task::spawn_blocking(move || loop {
            if let Err(e) = sub.push_blocking(batch(1)) {
                return e;
            }
        })
        .await
        .unwrap();
        assert!(err.contains("tm-b") && err.contains("security.token"), "{err}");
    }
}

/// A CA and certificates it signs for loopback, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    /// A new CA; returns its certificate and key.
    fn ca(&self, name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(self.dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
        (cert, key)
    }

    /// Certificate and key of TaskManager `name` for 127.0.0.1 and localhost, signed by `ca`,
    /// trusting the CA `trust`.
    fn node(&self, name: &str, ca: &(rcgen::Certificate, rcgen::KeyPair), trust: &str, token: Option<&str>) -> SecurityConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
        let path = |f: String| self.dir.path().join(f).display().to_string();
        std::fs::write(path(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(path(format!("{name}.key")), key.serialize_pem()).unwrap();
        SecurityConfig {
            token: token.map(str::to_string),
            tls: Some(TlsPaths {
                cert: path(format!("{name}.crt")),
                key: path(format!("{name}.key")),
                trust_cert: path(format!("{trust}.pem")),
            }),
        }
    }
}

/// Over TLS with mutual authentication (and a token inside it), buffers move both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_moves_buffers_both_ways() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let a = start("tm-a", &pki.node("tm-a", &ca, "ca", Some("s3cret"))).await;
    let b = start("tm-b", &pki.node("tm-b", &ca, "ca", Some("s3cret"))).await;
    let there = channel(&a, &b, id(8));
    let back = channel(&b, &a, ChannelId { edge: 1, ..id(8) });
    there.delivers(0..3).await;
    back.delivers(0..3).await;
    assert_eq!(a.peers.lock().len(), 1, "both directions share one connection");
}

/// A client whose certificate another CA signed is refused by the TLS handshake (it never
/// reaches the data protocol). The real link keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let other = pki.ca("other");
    let a = start("tm-a", &pki.node("tm-a", &ca, "ca", None)).await;
    let b = start("tm-b", &pki.node("tm-b", &ca, "ca", None)).await;
    let ch = channel(&a, &b, id(9));
    ch.delivers(0..2).await;

    // Trusts the right CA (so it would accept the server) but presents a foreign certificate.
    let stranger = pki.node("stranger", &other, "ca", None);
    let err = intruder(&b, "tm-0", &stranger).await.unwrap_err();
    assert!(!err.is_transient(), "a TLS refusal is not retried: {err}");
    ch.delivers(2..4).await;
}
