//! The job catalog: one small JSON file per submitted job in `jobmanager.catalog.dir`, written
//! when a job is submitted, restarts or ends. A JobManager started on the same catalog resumes
//! every job that had not ended, from the latest `_metadata` in its checkpoint storage.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// One job's catalog entry: enough to compile it again and to know whether it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    /// The job id; also the file name (`<id>.json`).
    pub id: String,
    /// The job's name, from the job file.
    pub name: String,
    /// The job file as submitted (or a program's JobGraph JSON), and where it came from.
    pub definition: String,
    /// How `definition` reads; entries written before programs existed are job files.
    #[serde(default)]
    pub kind: crate::job::DefinitionKind,
    pub origin: String,
    /// The job's effective configuration (explicitly set keys).
    pub config: BTreeMap<String, String>,
    /// The attempt running when the entry was written; a recovered job continues at the next.
    pub attempt: u32,
    /// A state name (`RUNNING`, `FINISHED`, ...).
    pub state: String,
    /// The folder of a completed stop-with-savepoint, which committed the sinks' output: a
    /// recovery restores it rather than an older checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_savepoint: Option<String>,
}

impl JobRecord {
    /// Whether the job ended (FINISHED, FAILED, CANCELED): ended jobs are not recovered.
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "FINISHED" | "FAILED" | "CANCELED")
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    dir: PathBuf,
    /// The sequence number of each job's last written entry: writes run outside the
    /// JobManager's lock, so an older entry must never overwrite a newer one.
    written: Arc<Mutex<HashMap<String, u64>>>,
}

impl Catalog {
    /// Opens (creating it if needed) the catalog directory `jobmanager.catalog.dir`.
    pub fn open(dir: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { dir: PathBuf::from(dir), written: Arc::default() })
    }

    /// Writes a record atomically (temporary file, then rename), unless an entry with a
    /// higher sequence number `seq` was written already.
    pub fn save(&self, r: &JobRecord, seq: u64) {
        let mut written = self.written.lock();
        let last = written.entry(r.id.clone()).or_insert(0);
        if *last > seq {
            return;
        }
        *last = seq;
        let path = self.dir.join(format!("{}.json", r.id));
        let tmp = self.dir.join(format!(".{}.json.tmp", r.id));
        let result = serde_json::to_vec_pretty(r)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::error!(job = %r.id, "cannot write the job catalog entry {}: {e}", path.display());
        }
    }

    /// Every record; unreadable files are reported and skipped.
    pub fn load(&self) -> Vec<JobRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") || e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!("skipping unreadable job catalog entry {}: {e}", path.display()),
            }
        }
        out
    }
}
