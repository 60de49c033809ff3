//! Checkpoint storage against a real S3-compatible server (moto) on a loopback port, started
//! here. `make test` installs moto (`pip install 'moto[server]'`); without it this test fails
//! and says so, rather than passing without having run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_core::config::Config;
use weir_core::KeyGroupRange;
use weir_state::*;

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> (Moto, u16) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let bin = format!("{python} -m moto.server");
    let child = Command::new(&python)
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin} ({e}): install it with `pip install 'moto[server]'` (make test does)"));
    let moto = Moto(child);
    let mut moto = moto;
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = moto.0.try_wait() {
            panic!("{bin} exited ({status}): install it with `pip install 'moto[server]'` (make test does)");
        }
        assert!(Instant::now() < deadline, "moto_server did not listen on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (moto, port)
}

/// Creates a bucket with a plain HTTP request (moto does not check signatures).
fn create_bucket(port: u16, bucket: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"), "bucket creation failed: {resp}");
}

fn s3_config(port: u16) -> Config {
    let mut c = Config::new();
    c.set("s3.endpoint", &format!("http://127.0.0.1:{port}"), "test").unwrap();
    c.set("s3.access-key", "testing", "test").unwrap();
    c.set("s3.secret-key", "testing", "test").unwrap();
    c.set("s3.path.style.access", "true", "test").unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_round_trip_through_s3_at_another_parallelism() {
    let (_moto, port) = start_moto();
    create_bucket(port, "weir-checkpoints");
    let storage = CheckpointStorage::open("s3://weir-checkpoints/cluster-a", &s3_config(port)).unwrap();

    // A multipart upload (larger than one part) streams from disk and comes back intact.
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(storage::PART_SIZE * 2 + 999)).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(dir.path().join("big"), &big).unwrap();
    let rec = storage.put_file("job/chk-1/big", &dir.path().join("big")).await.unwrap();
    storage.get_file_checked(&rec, &dir.path().join("back")).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("back")).unwrap(), big);

    for kind in [BackendKind::HashMap, BackendKind::RocksDb] {
        for incremental in [false, true] {
            let job = format!("job-{kind:?}-{incremental}");
            let value = ValueState::<i64>::new("v");
            let mut old: Vec<StateBackend> =
                (0..2).map(|i| StateBackend::create(kind, dir.path(), 128, KeyGroupRange::for_subtask(128, 2, i)).unwrap()).collect();
            for k in 0..1000i64 {
                let mut c = KeyContext::default();
                c.set_key(&k.to_le_bytes(), 128);
                let owner = weir_core::keygroup::subtask_for_key_group(128, 2, c.key_group) as usize;
                value.update(old[owner].keyed(), &c, &(k * k)).unwrap();
            }
            let mut handles = Vec::new();
            for (i, b) in old.iter_mut().enumerate() {
                let t = SnapshotTarget {
                    snapshot: SnapshotType::Checkpoint { job: job.clone(), incremental },
                    checkpoint: 1,
                    operator: "op".into(),
                    subtask: i as u32,
                };
                handles.push(b.snapshot(t).unwrap().upload(&storage).await.unwrap());
            }
            assert!(!storage.list(&job).await.unwrap().is_empty());
            let mut total = 0;
            for i in 0..3 {
                let range = KeyGroupRange::for_subtask(128, 3, i);
                let mut b = StateBackend::restore(kind, dir.path(), 128, range, &storage, &handles).await.unwrap();
                total += b.keyed().entries().unwrap();
                for k in 0..1000i64 {
                    let mut c = KeyContext::default();
                    c.set_key(&k.to_le_bytes(), 128);
                    if range.contains(c.key_group) {
                        assert_eq!(value.get(b.keyed(), &c).unwrap(), Some(k * k));
                    }
                }
            }
            assert_eq!(total, 1000, "{kind:?} incremental={incremental}");
        }
    }

    // A missing object is reported with its s3:// path.
    storage.delete("job/chk-1/big").await.unwrap();
    let err = storage.get_file_checked(&rec, &dir.path().join("back")).await.unwrap_err().to_string();
    assert!(err.contains("s3://weir-checkpoints/cluster-a/job/chk-1/big"), "{err}");
}

#[tokio::test]
async fn an_unreachable_s3_endpoint_is_an_error_naming_the_path() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = s3_config(port);
    cfg.set("s3.endpoint", &format!("http://127.0.0.1:{port}"), "test").unwrap();
    let storage = CheckpointStorage::open("s3://nowhere/x", &cfg).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(120), storage.put_bytes("job/chk-1/f", vec![1, 2, 3]))
        .await
        .expect("gives up in time")
        .unwrap_err()
        .to_string();
    assert!(err.contains("s3://nowhere/x/job/chk-1/f"), "{err}");
}
