//! The job-file parser and compiler: any text a user submits gives a JobGraph or a `JobError`,
//! never a panic. A compiled graph must survive the JSON round trip it makes to the
//! TaskManagers, and the TaskManagers' JSON decoder must refuse any other bytes cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::job::{compile_job, JobFile};
use weir_core::{Config, JobGraph};

fuzz_target!(|data: &[u8]| {
    let _ = JobGraph::from_json(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(file) = JobFile::parse(text, "fuzz.yaml") {
        let _ = file.derived_uids();
    }
    if let Ok((graph, _config)) = compile_job(text, "fuzz.yaml", &Config::new(), &Config::new()) {
        let _ = graph.slots_needed();
        let back = JobGraph::from_json(&graph.to_json()).expect("a compiled graph decodes from its own JSON");
        assert_eq!(back.to_json(), graph.to_json());
    }
});
