//! SQL scripts end to end: every `tests/sql/*.sql` runs with `weir run` on the embedded mini
//! cluster and its output must equal the `.expected` file beside it; bad scripts fail with
//! the line, column and what is wrong; job options written in a WITH clause reach the job.
//!
//! A script's first line says what to compare:
//! - `-- check: files a,b`: the lines committed under `${DIR}/a` and `${DIR}/b`, each sorted
//!   (parallel subtasks write their files in any order), against the `== a` and `== b`
//!   sections of the expected file (one folder needs no section line);
//! - `-- check: stdout`: the changelog the script printed (`+I[...]`, `-U[...]`, `+U[...]`),
//!   applied row by row, as the final table in sorted order. Applying it also checks it: a
//!   `-U` must retract a row that is there;
//! - `-- check: stdout upsert N`: the same for a sink with a primary key (its first N columns):
//!   rows replace their key's row, and a `-U` fails the test.
//!
//! `${DIR}` is the test's temporary directory, `${DATA}` the folder `tests/sql/data`.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn sql_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sql")
}

/// Runs `weir` with `args` in `dir`: (success, stdout, stderr).
fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = weir(dir, &args);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Writes `script` into `dir` with its placeholders filled in; returns its path.
fn write_script(dir: &Path, name: &str, script: &str) -> PathBuf {
    let data = sql_dir().join("data");
    let text = script.replace("${DIR}", &dir.display().to_string()).replace("${DATA}", &data.display().to_string());
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The final table of a printed changelog, sorted. Panics on a retraction of a row that is
/// not there.
fn apply_changelog(stdout: &str) -> Vec<String> {
    let mut table: BTreeMap<String, usize> = BTreeMap::new();
    for line in stdout.lines() {
        let line = line.split_once("> ").map(|(_, rest)| rest).unwrap_or(line);
        let (kind, row) = line.split_at(2);
        let row = row.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or_else(|| panic!("not a changelog row: {line}"));
        match kind {
            "+I" | "+U" => *table.entry(row.to_string()).or_default() += 1,
            "-U" | "-D" => {
                let n = table.get_mut(row).unwrap_or_else(|| panic!("{kind} retracts [{row}], which is not in the table: {stdout}"));
                *n -= 1;
                if *n == 0 {
                    table.remove(row);
                }
            }
            other => panic!("unknown row kind {other} in {line}"),
        }
    }
    table.into_iter().flat_map(|(row, n)| std::iter::repeat_n(row, n)).collect()
}

/// The final table of a printed upsert changelog whose first `key` columns are the primary
/// key, sorted: `+I` and `+U` replace the key's row, `-D` removes it. Panics on a `-U` (an
/// upsert sink gets none) and on a `-D` of a row that is not there.
fn apply_upserts(stdout: &str, key: usize) -> Vec<String> {
    let mut table: BTreeMap<String, String> = BTreeMap::new();
    for line in stdout.lines() {
        let line = line.split_once("> ").map(|(_, rest)| rest).unwrap_or(line);
        let (kind, row) = line.split_at(2);
        let row = row.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or_else(|| panic!("not a changelog row: {line}"));
        let k = row.split(", ").take(key).collect::<Vec<_>>().join(", ");
        match kind {
            "+I" | "+U" => {
                table.insert(k, row.to_string());
            }
            "-D" => {
                table.remove(&k).unwrap_or_else(|| panic!("-D of [{row}], which is not in the table: {stdout}"));
            }
            other => panic!("an upsert sink got a {other} row: {line}\n{stdout}"),
        }
    }
    let mut rows: Vec<String> = table.into_values().collect();
    rows.sort();
    rows
}

/// An expected file's lines by folder: after a `== folder` line, or all under "" without one
/// (a script that checks one folder).
fn expected_sections(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        match line.strip_prefix("== ") {
            Some(folder) => current = folder.to_string(),
            None => sections.entry(current.clone()).or_default().push(line.to_string()),
        }
    }
    if let Some(only) = sections.remove("") {
        sections.insert("*".into(), only);
    }
    sections
}

#[test]
fn every_golden_script_gives_its_expected_output() {
    let mut scripts: Vec<PathBuf> =
        std::fs::read_dir(sql_dir()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "sql")).collect();
    scripts.sort();
    assert!(scripts.len() >= 3, "the golden scripts are missing: {scripts:?}");
    for script in scripts {
        let name = script.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&script).unwrap();
        let expected_text =
            std::fs::read_to_string(script.with_extension("expected")).unwrap_or_else(|_| panic!("{name}.expected is missing"));
        let check =
            text.lines().next().and_then(|l| l.strip_prefix("-- check: ")).unwrap_or_else(|| panic!("{name}.sql: no `-- check:` line"));
        let dir = tempfile::tempdir().unwrap();
        let path = write_script(dir.path(), "job.sql", &text);
        let (ok, stdout, stderr) = run(dir.path(), &["run", path.to_str().unwrap()]);
        assert!(ok, "{name}.sql failed: {stderr}");
        let (got, expected): (Vec<String>, Vec<String>) = if let Some(n) = check.strip_prefix("stdout upsert ") {
            let mut expected: Vec<String> = expected_text.lines().map(str::to_string).collect();
            expected.sort();
            (apply_upserts(&stdout, n.parse().unwrap()), expected)
        } else if check == "stdout" {
            let mut expected: Vec<String> = expected_text.lines().map(str::to_string).collect();
            expected.sort();
            (apply_changelog(&stdout), expected)
        } else {
            let folders = check.strip_prefix("files ").unwrap_or_else(|| panic!("{name}.sql: unknown check '{check}'"));
            let sections = expected_sections(&expected_text);
            let mut got = Vec::new();
            let mut expected = Vec::new();
            for folder in folders.split(',') {
                let mut lines = committed_lines(&dir.path().join(folder));
                lines.sort();
                got.push(format!("== {folder}"));
                got.extend(lines);
                let mut want = sections
                    .get(folder)
                    .or_else(|| sections.get("*"))
                    .cloned()
                    .unwrap_or_else(|| panic!("{name}.expected has no section for {folder}"));
                want.sort();
                expected.push(format!("== {folder}"));
                expected.extend(want);
            }
            (got, expected)
        };
        assert_eq!(got, expected, "{name}.sql: output differs\nstderr: {stderr}");
    }
}

#[test]
fn bad_scripts_fail_naming_line_column_and_what_is_wrong() {
    let table = "CREATE TABLE t (a BIGINT, b STRING) WITH ('connector' = 'datagen', 'number-of-rows' = '5');\n\
                 CREATE TABLE s (a BIGINT) WITH ('connector' = 'blackhole');\n";
    let cases: &[(&str, &str)] = &[
        ("INSERT INTO s SELECT c FROM t;", "job.sql:3:22: No field named c"),
        ("INSERT INTO s\n  SELECT frobnicate(a) FROM t;", "job.sql:4:10: Invalid function 'frobnicate'"),
        ("INSERT INTO s SELECT a FROM nope;", "job.sql:3:29: unknown table 'nope' (tables and views: 's', 't')"),
        ("INSERT INTO s SELECT a + b FROM t;", "job.sql:3:22: Cannot coerce arithmetic expression Int64 + Utf8"),
        ("INSERT INTO nope SELECT a FROM t;", "job.sql:3:13: table 'nope' does not exist"),
        ("INSERT INTO s SELECT a, b FROM t;", "the query gives 2 columns, but table 's' takes 1 (a BIGINT)"),
        ("INSERT INTO s SELECT a FROM t ORDER BY a;", "job.sql:3:1: ORDER BY is not supported on a stream"),
        ("SET 'execution.checkpointing.intervall' = '1s';", "job.sql:3:1: unknown configuration key 'execution.checkpointing.intervall'"),
        ("SET 'state.backend.type' = 'leveldb';", "job.sql:3:1: "),
        (
            "CREATE TABLE u (a INT) WITH ('connector' = 'datagen', 'rows-per-secnd' = '5');",
            "job.sql:3:55: unsupported option 'rows-per-secnd' for connector 'datagen'",
        ),
        (
            "CREATE TABLE u (a INT) WITH ('connector' = 'datagen', 'scan.watermark.idle-timeout' = 'soon');",
            "job.sql:3:55: option 'scan.watermark.idle-timeout' of table 'u': ",
        ),
        (
            "CREATE TABLE u (a INT) WITH ('connector' = 'blackhole', 'scan.watermark.idle-timeout' = '1s');",
            "option 'scan.watermark.idle-timeout' of table 'u': connector 'blackhole' is not a source",
        ),
        ("SET 'table.exec.source.idle-timeout' = 'soon';", "job.sql:3:1: "),
        ("CREATE TABLE u (a INT) WITH ('connector' = 'kafka');", "unknown connector 'kafka'"),
        ("INSERT INTO s SELECT a FROM t WHERE;", "job.sql:3:36: Expected: an expression"),
        ("DROP TABLE t;", "job.sql:3:1: unsupported statement starting with DROP"),
        (
            "INSERT INTO s SELECT t.a FROM t LEFT JOIN t AS u ON t.a = u.a AND u.b <> 'x';",
            "job.sql:3:1: an outer join's ON may only hold equalities between the two sides for now",
        ),
        ("INSERT INTO s SELECT t.a FROM t JOIN t AS u ON t.a < u.a;", "job.sql:3:1: a join needs an equality between the two sides"),
        (
            "CREATE TABLE f (a BIGINT) WITH ('connector' = 'filesystem', 'path' = '/tmp/x', 'format' = 'csv');\n\
             INSERT INTO f SELECT COUNT(*) FROM t GROUP BY b;",
            "job.sql:4:1: table 'f' (connector 'filesystem') only takes appended rows",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (statement, expected) in cases {
        let path = write_script(dir.path(), "job.sql", &format!("{table}{statement}\n"));
        let (ok, _, stderr) = run(dir.path(), &["run", path.to_str().unwrap()]);
        assert!(!ok, "`{statement}` was accepted");
        assert!(stderr.contains(expected), "`{statement}`: expected `{expected}` in: {stderr}");
        assert!(!stderr.contains("panicked"), "`{statement}`: {stderr}");
    }
}

/// Tutorials put checkpoint settings into a table's WITH clause: Weir applies them to the
/// whole job, says so with the equivalent SET statement, and refuses two tables that disagree.
#[test]
fn checkpoint_options_in_a_with_clause_apply_to_the_job_with_a_notice() {
    let cluster = Cluster::start(1, 2, &[]);
    let dir = cluster.dir.path();
    let script = "CREATE TABLE gen (n BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '200', \
                  'checkpoint.interval.ms' = '100', 'state.backend' = 'rocksdb');\n\
                  CREATE TABLE sink (n BIGINT, c BIGINT) WITH ('connector' = 'blackhole');\n\
                  INSERT INTO sink SELECT n % 10, COUNT(*) FROM gen GROUP BY n % 10;\n";
    let path = write_script(dir, "job.sql", script);
    let out = cluster.weir(&["run", path.to_str().unwrap(), "--detached", "--output", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("option 'checkpoint.interval.ms' of table 'gen' is a job setting")
            && stderr.contains("SET 'execution.checkpointing.interval' = '100ms';"),
        "{stderr}"
    );
    assert!(stderr.contains("SET 'state.backend.type' = 'rocksdb';"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    // Checkpoints complete only if the interval reached the job (checkpointing is off by default).
    wait_for("3 completed checkpoints of the SQL job", || {
        let out = cluster.weir(&["checkpoints", &id, "--output", "json"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.matches("\"COMPLETED\"").count() >= 3).then_some(())
    });
    let out = cluster.weir(&["cancel", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let conflicting = "CREATE TABLE a (n BIGINT) WITH ('connector' = 'datagen', 'checkpoint.interval.ms' = '100');\n\
                       CREATE TABLE b (n BIGINT) WITH ('connector' = 'datagen', 'checkpoint.interval.ms' = '200');\n";
    let path = write_script(dir, "conflict.sql", conflicting);
    let (ok, _, stderr) = run(dir, &["run", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("conflict.sql:2:58: option 'checkpoint.interval.ms' of table 'b' sets 'execution.checkpointing.interval' to '200ms', but table 'a' set it to '100ms'")
            && stderr.contains("SET 'execution.checkpointing.interval' = '...';"),
        "{stderr}"
    );
}

#[test]
fn explain_show_tables_and_describe_print_without_running_anything() {
    let dir = tempfile::tempdir().unwrap();
    let script = "CREATE TABLE words (word STRING, n INT NOT NULL) WITH ('connector' = 'datagen');\n\
                  CREATE TABLE counts (word STRING, c BIGINT) WITH ('connector' = 'print');\n\
                  SHOW TABLES;\nDESCRIBE words;\n\
                  EXPLAIN INSERT INTO counts SELECT word, COUNT(*) FROM words GROUP BY word;\n";
    let path = write_script(dir.path(), "job.sql", script);
    let (ok, stdout, stderr) = run(dir.path(), &["run", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("counts\nwords\n"), "{stdout}");
    assert!(stdout.contains("words:\n  word STRING\n  n INT NOT NULL\n"), "{stdout}");
    assert!(stdout.contains("group-aggregate") && stdout.contains("[keyed state]") && stdout.contains("hash(weir.key)"), "{stdout}");
    assert!(!stderr.contains("submitted"), "EXPLAIN must not run the job: {stderr}");
    // A NOT NULL key takes the typed path, partitioned by the key column itself.
    let typed = "CREATE TABLE words (word STRING NOT NULL) WITH ('connector' = 'datagen');\n\
                 CREATE TABLE counts (word STRING, c BIGINT) WITH ('connector' = 'print');\n\
                 EXPLAIN INSERT INTO counts SELECT word, COUNT(*) FROM words GROUP BY word;\n";
    let path = write_script(dir.path(), "typed.sql", typed);
    let (ok, stdout, stderr) = run(dir.path(), &["run", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"typed\":true") && stdout.contains("hash(k0)"), "{stdout}");
}

/// The idle timeout reaches each source's watermark assigner: the job's setting, or the
/// table's own option, which wins.
#[test]
fn sources_get_the_idle_timeout_of_the_job_or_of_their_table() {
    let dir = tempfile::tempdir().unwrap();
    let script = "SET 'table.exec.source.idle-timeout' = '2s';\n\
                  CREATE TABLE a (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH ('connector' = 'socket', 'hostname' = 'localhost', 'port' = '9', 'format' = 'csv');\n\
                  CREATE TABLE b (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH ('connector' = 'socket', 'hostname' = 'localhost', 'port' = '9', 'format' = 'csv', 'scan.watermark.idle-timeout' = '500ms');\n\
                  CREATE TABLE out (k BIGINT) WITH ('connector' = 'blackhole');\n\
                  EXPLAIN INSERT INTO out SELECT a.k FROM a JOIN b ON a.k = b.k AND a.ts BETWEEN b.ts AND b.ts + INTERVAL '1' MINUTE;\n";
    let path = write_script(dir.path(), "job.sql", script);
    let (ok, stdout, stderr) = run(dir.path(), &["run", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"idle_timeout_ms\":2000") && stdout.contains("\"idle_timeout_ms\":500"), "{stdout}");
    assert!(stdout.contains("\"interval\":{\"left_time\":1,\"lower\":0,\"right_time\":3,\"upper\":60000}"), "{stdout}");
}

/// The committed changelog of a `debezium-json` sink applied row by row: the final table,
/// sorted. Panics if a retraction (`"op": "d"`) removes a row that is not there.
fn apply_debezium(lines: &[String]) -> Vec<String> {
    let mut table: BTreeMap<String, usize> = BTreeMap::new();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        match v["op"].as_str() {
            Some("c") => *table.entry(v["after"].to_string()).or_default() += 1,
            Some("d") => {
                let row = v["before"].to_string();
                let n = table.get_mut(&row).unwrap_or_else(|| panic!("a retraction of {row}, which is not in the table"));
                *n -= 1;
                if *n == 0 {
                    table.remove(&row);
                }
            }
            other => panic!("unknown op {other:?} in {line}"),
        }
    }
    table.into_iter().flat_map(|(row, n)| std::iter::repeat_n(row, n)).collect()
}

/// The committed part files of a file sink in `dir`, each with its lines, in the order they were
/// written: by attempt, then sequence number, then subtask (`part-<job>-<attempt>-<subtask>-<seq>`).
/// A changelog must be applied in this order: a key's rows stay in one subtask, whose files
/// follow each other in it.
fn committed_files_in_order(dir: &Path) -> Vec<(String, Vec<String>)> {
    let mut files: Vec<((u64, u64, u64), String, Vec<String>)> = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let parts: Vec<&str> = name.split('-').collect();
        let number = |i: usize| parts.get(i).and_then(|p| p.parse::<u64>().ok()).unwrap_or_else(|| panic!("part file name {name}"));
        let order = (number(2), number(4), number(3));
        let lines = std::fs::read_to_string(entry.path()).unwrap().lines().map(str::to_string).collect();
        files.push((order, name, lines));
    }
    files.sort();
    files.into_iter().map(|(_, name, lines)| (name, lines)).collect()
}

/// `k, COUNT(*), SUM(id)` per `k = id % 7` over ids `1..=rows`, as the sink's JSON rows.
fn expected_totals(rows: i64) -> Vec<String> {
    let mut out: Vec<String> = (0..7)
        .map(|k| {
            let ids = (1..=rows).filter(|id| id % 7 == k);
            let (n, s) = ids.fold((0i64, 0i64), |(n, s), id| (n + 1, s + id));
            serde_json::json!({"k": k, "n": n, "s": s}).to_string()
        })
        .collect();
    out.sort();
    out
}

/// A grouped count and sum over generated ids, written as a changelog into transactional files.
fn totals_script(rows: i64, rate: u32, parallelism: u32, out: &str) -> String {
    totals_script_with(rows, rate, parallelism, out, "BIGINT")
}

/// [`totals_script`] with the id column of type `id_type`: `BIGINT NOT NULL` puts the
/// aggregate on the typed path.
fn totals_script_with(rows: i64, rate: u32, parallelism: u32, out: &str, id_type: &str) -> String {
    format!(
        "SET 'parallelism.default' = '{parallelism}';\n\
         SET 'execution.checkpointing.interval' = '200ms';\n\
         SET 'state.backend.type' = 'rocksdb';\n\
         CREATE TABLE gen (id {id_type}, k AS id % 7) WITH ('connector' = 'datagen', 'scan.parallelism' = '1', \
         'rows-per-second' = '{rate}', 'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '{rows}');\n\
         CREATE TABLE totals (k BIGINT, n BIGINT, s BIGINT) WITH ('connector' = 'filesystem', 'path' = '{out}', \
         'format' = 'debezium-json');\n\
         INSERT INTO totals SELECT k, COUNT(*), SUM(id) FROM gen GROUP BY k;\n"
    )
}

/// Runs `script` (writing into `out`) on a cluster of two one-slot TaskManagers, SIGKILLing a
/// TaskManager after each of two further completed checkpoints (and starting a replacement);
/// returns once the job finished, after checking that a kill hit it while it ran.
fn run_with_kills(script: impl Fn(&Path) -> String) -> PathBuf {
    let chk = tempfile::tempdir().unwrap();
    let dir_cfg = format!("execution.checkpointing.dir=file://{}", chk.path().display());
    let cfg = [
        dir_cfg.as_str(),
        "restart-strategy.type=fixed-delay",
        "restart-strategy.fixed-delay.attempts=50",
        "restart-strategy.fixed-delay.delay=200ms",
    ];
    // One slot per TaskManager: each runs one subtask of every vertex, so every kill hits the job.
    let mut cluster = Cluster::start(2, 1, &cfg);
    let out = cluster.dir.path().join("out");
    let path = cluster.write("job.sql", &script(&out));
    let id = cluster.submit(&path, &[]);
    cluster.wait_for_state(&id, "RUNNING");
    let mut kills = 0;
    for k in 0..2 {
        let before = cluster.completed_checkpoints(&id);
        wait_for("a further completed checkpoint", || (cluster.completed_checkpoints(&id) > before).then_some(()));
        if cluster.try_job_status(&id).is_some_and(|s| s["state"] == "FINISHED") {
            break;
        }
        let victim = (0..cluster.tms.len()).find(|i| cluster.tms[*i].child.try_wait().ok().flatten().is_none()).unwrap();
        eprintln!("kill {k}: SIGKILL {}", cluster.tms[victim].name);
        cluster.tms[victim].kill();
        cluster.add_taskmanager();
        kills += 1;
    }
    assert!(kills >= 1, "the job finished before the first kill: the test proves nothing");
    let status = cluster.wait_until_finished(&id);
    assert!(status["restarts"].as_u64().unwrap_or(0) >= 1, "no restart happened: {status}");
    // The output outlives the cluster's folder.
    let kept = tempfile::tempdir().unwrap().keep();
    for (name, lines) in committed_files_in_order(&out) {
        std::fs::write(kept.join(name), lines.join("\n") + "\n").unwrap();
    }
    kept
}

/// A SQL aggregate keeps exactly-once results while TaskManagers are SIGKILLed: the changelog
/// its debezium-json sink committed applies to exactly the counts and sums of the generated
/// rows, though the job restarted from checkpoints.
#[test]
fn a_sql_aggregate_keeps_exactly_once_results_across_taskmanager_kills() {
    let rows = 24_000;
    // NOT NULL ids: the typed path (the savepoint test below runs the general one).
    let out = run_with_kills(|out| totals_script_with(rows, 2_000, 2, out.to_str().unwrap(), "BIGINT NOT NULL"));
    let changelog: Vec<String> = committed_files_in_order(&out).into_iter().flat_map(|(_, lines)| lines).collect();
    std::fs::remove_dir_all(&out).ok();
    assert_eq!(apply_debezium(&changelog), expected_totals(rows));
}

/// A tumbling-window aggregate over event time (a computed column of the generated ids) keeps
/// exactly-once results across TaskManager kills: every window is emitted once, with its exact
/// count and sum, though windows were open in checkpoints the job restarted from.
#[test]
fn a_sql_window_aggregate_keeps_exactly_once_results_across_taskmanager_kills() {
    let rows = 24_000i64;
    let out = run_with_kills(|out| {
        format!(
            "SET 'parallelism.default' = '2';\n\
             SET 'execution.checkpointing.interval' = '200ms';\n\
             CREATE TABLE gen (id BIGINT, ts AS TO_TIMESTAMP_MILLIS(id * 10), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n\
             WITH ('connector' = 'datagen', 'scan.parallelism' = '1', 'rows-per-second' = '2000', 'fields.id.kind' = 'sequence', \
             'fields.id.start' = '1', 'fields.id.end' = '{rows}');\n\
             CREATE TABLE windows (window_start STRING, n BIGINT, s BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv');\n\
             INSERT INTO windows SELECT CAST(window_start AS STRING), COUNT(*), SUM(id)\n\
             FROM TABLE(TUMBLE(TABLE gen, DESCRIPTOR(ts), INTERVAL '10' SECONDS)) GROUP BY window_start, window_end;\n",
            out.display()
        )
    });
    let got = committed_lines(&out);
    std::fs::remove_dir_all(&out).ok();
    // Window w holds the ids with id * 10 ms in [10 s * w, 10 s * (w + 1)).
    let mut windows: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for id in 1..=rows {
        let e = windows.entry(id * 10 / 10_000).or_default();
        e.0 += 1;
        e.1 += id;
    }
    let epoch = chrono::DateTime::from_timestamp(0, 0).unwrap().naive_utc();
    let mut expected: Vec<String> = windows
        .iter()
        .map(|(w, (n, s))| format!("{},{n},{s}", (epoch + chrono::Duration::seconds(w * 10)).format("%Y-%m-%dT%H:%M:%S")))
        .collect();
    expected.sort();
    assert_eq!(got, expected);
}

/// Runs `script(1, out)` on a cluster, stops it with a savepoint once a checkpoint completed,
/// and resumes `script(2, out)` from the savepoint; checks that the resumed job's `operator`
/// runs at parallelism 2. Returns the files the first run committed and then those of the
/// second, each in order.
fn stop_and_resume_at_parallelism_2(operator: &str, script: impl Fn(u32, &Path) -> String) -> (Vec<String>, Vec<String>) {
    let cluster = Cluster::start(1, 3, &[]);
    // Both runs write into the same folder: the savepoint's pending files are committed there.
    let out = cluster.dir.path().join("out");
    let first = cluster.write("first.sql", &script(1, &out));
    let id = cluster.submit(&first, &[]);
    cluster.wait_for_state(&id, "RUNNING");
    wait_for("output committed by a checkpoint", || committed_files_in_order(&out).iter().any(|(_, l)| !l.is_empty()).then_some(()));
    let savepoints = cluster.dir.path().join("savepoints");
    let stop = cluster.weir(&["stop", &id, "--savepoint-dir", savepoints.to_str().unwrap(), "--output", "json"]);
    assert!(stop.status.success(), "stop: {}", String::from_utf8_lossy(&stop.stderr));
    let v: serde_json::Value = serde_json::from_slice(&stop.stdout).unwrap();
    let savepoint = v["path"].as_str().unwrap_or_else(|| panic!("no savepoint path in {v}")).to_string();
    let first_run = committed_files_in_order(&out);
    let second = cluster.write("second.sql", &script(2, &out));
    let run = cluster.weir(&["run", second.to_str().unwrap(), "-s", &savepoint, "--output", "json"]);
    assert!(run.status.success(), "resume: {}", String::from_utf8_lossy(&run.stderr));
    let status: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(status["state"], "FINISHED", "{status}");
    let vertex = status["vertices"].as_array().unwrap().iter().find(|v| v["name"].as_str().unwrap_or("").contains(operator)).cloned();
    assert_eq!(vertex.map(|v| v["parallelism"].clone()), Some(serde_json::json!(2)), "{status}");
    let first_names: std::collections::HashSet<String> = first_run.iter().map(|(name, _)| name.clone()).collect();
    let second_lines =
        committed_files_in_order(&out).into_iter().filter(|(name, _)| !first_names.contains(name)).flat_map(|(_, l)| l).collect();
    (first_run.into_iter().flat_map(|(_, l)| l).collect(), second_lines)
}

/// Stop a SQL aggregate with a savepoint at parallelism 1 and resume it at parallelism 2: the
/// groups' state is split by key group, and the two runs' changelogs together apply to the
/// exact totals.
#[test]
fn a_sql_aggregate_resumes_from_a_savepoint_at_another_parallelism() {
    let rows = 6_000;
    let (first, second) =
        stop_and_resume_at_parallelism_2("group-aggregate", |p, out| totals_script(rows, 1_000, p, out.to_str().unwrap()));
    assert!(!first.is_empty(), "the first run committed nothing before its savepoint");
    assert!(apply_debezium(&first) != expected_totals(rows), "the first run finished before it was stopped");
    let all: Vec<String> = first.into_iter().chain(second).collect();
    assert_eq!(apply_debezium(&all), expected_totals(rows));
}

/// The same for a window aggregate: windows open at the savepoint are restored into the
/// subtasks that own their key groups, and every window is emitted exactly once over the two
/// runs.
#[test]
fn a_sql_window_aggregate_resumes_from_a_savepoint_at_another_parallelism() {
    let rows = 6_000i64;
    let script = |p: u32, out: &Path| {
        format!(
            "SET 'parallelism.default' = '{p}';\n\
             SET 'execution.checkpointing.interval' = '200ms';\n\
             CREATE TABLE gen (id BIGINT, ts AS TO_TIMESTAMP_MILLIS(id * 10), WATERMARK FOR ts AS ts)\n\
             WITH ('connector' = 'datagen', 'scan.parallelism' = '1', 'rows-per-second' = '1000', 'fields.id.kind' = 'sequence', \
             'fields.id.start' = '1', 'fields.id.end' = '{rows}');\n\
             CREATE TABLE windows (window_start STRING, k BIGINT, n BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv');\n\
             INSERT INTO windows SELECT CAST(window_start AS STRING), id % 3, COUNT(*)\n\
             FROM TABLE(TUMBLE(TABLE gen, DESCRIPTOR(ts), INTERVAL '5' SECONDS)) GROUP BY window_start, window_end, id % 3;\n",
            out.display()
        )
    };
    let (first, second) = stop_and_resume_at_parallelism_2("window-aggregate", script);
    assert!(!first.is_empty(), "the first run emitted no window before its savepoint");
    let mut windows: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for id in 1..=rows {
        *windows.entry((id * 10 / 5_000, id % 3)).or_default() += 1;
    }
    assert!(first.len() < windows.len(), "the first run finished before it was stopped");
    let epoch = chrono::DateTime::from_timestamp(0, 0).unwrap().naive_utc();
    let mut expected: Vec<String> = windows
        .iter()
        .map(|((w, k), n)| format!("{},{k},{n}", (epoch + chrono::Duration::seconds(w * 5)).format("%Y-%m-%dT%H:%M:%S")))
        .collect();
    expected.sort();
    let mut got: Vec<String> = first.into_iter().chain(second).collect();
    got.sort();
    assert_eq!(got, expected);
}

/// Event time: a tumbling window closes when the watermark passes its end. The source reads
/// 4096 lines per batch and the watermark follows each batch, so rows of the second batch
/// whose window the first batch's watermark closed are late: they are dropped, as Flink drops
/// them, while rows out of order within the watermark's delay still count.
#[test]
fn window_aggregates_count_out_of_order_rows_and_drop_late_ones() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
    let at = |s: i64| (t0 + chrono::Duration::seconds(s)).format("%Y-%m-%d %H:%M:%S").to_string();
    let mut lines = Vec::new();
    let mut counted: BTreeMap<i64, i64> = BTreeMap::new();
    for i in 0..6_000i64 {
        // Pairs swapped: every odd second arrives before the even one before it.
        let s = if i % 2 == 0 { i + 1 } else { i - 1 };
        lines.push(format!("{},{s}", at(s)));
        *counted.entry(s / 60).or_default() += 1;
        if (4_200..4_250).contains(&i) {
            // 50 rows of the first minute, long after the watermark passed it.
            lines.push(format!("{},late", at(30)));
        }
    }
    std::fs::write(dir.path().join("events.csv"), lines.join("\n") + "\n").unwrap();
    let script = "CREATE TABLE events (ts TIMESTAMP(3), tag STRING, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n\
                  WITH ('connector' = 'filesystem', 'path' = '${DIR}/events.csv', 'format' = 'csv', 'scan.parallelism' = '1');\n\
                  CREATE TABLE counts (minute STRING, n BIGINT) WITH ('connector' = 'filesystem', 'path' = '${DIR}/out', 'format' = 'csv');\n\
                  SET 'parallelism.default' = '2';\n\
                  INSERT INTO counts SELECT CAST(window_start AS STRING), COUNT(*)\n\
                  FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end;\n";
    let path = write_script(dir.path(), "job.sql", script);
    let (ok, _, stderr) = run(dir.path(), &["run", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let mut expected: Vec<String> = counted.iter().map(|(m, n)| format!("{},{n}", at(m * 60).replace(' ', "T"))).collect();
    expected.sort();
    assert_eq!(committed_lines(&dir.path().join("out")), expected);
}

/// `weir sql` without a script is the interactive client; fed from a pipe it runs the
/// statements in order: queries come back as a table (the default result mode) or as a
/// changelog, a bad statement prints an error and the session goes on (exit 1 at the end).
#[test]
fn the_interactive_client_runs_statements_and_shows_query_results() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let data = sql_dir().join("data");
    let input = format!(
        "CREATE TABLE clicks (`user` STRING, url STRING, ms BIGINT)\n\
         WITH ('connector' = 'filesystem', 'path' = '{}/clicks.json', 'format' = 'json');\n\
         SHOW TABLES;\n\
         SELECT url, COUNT(*) AS hits FROM clicks GROUP BY url;\n\
         SELECT nope FROM clicks;\n\
         SET 'sql-client.execution.result-mode' = 'changelog';\n\
         SELECT `user`, ms FROM clicks WHERE ms > 100;\n\
         QUIT;\n",
        data.display()
    );
    let mut child = std::process::Command::new(WEIR)
        .arg("sql")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "a failed statement makes a piped session exit 1: {stdout}");
    assert!(stdout.contains("\nclicks\n"), "{stdout}");
    assert!(stdout.contains("| url   | hits |\n|-------|------|\n| /cart | 2    |\n| /home | 5    |\n| /pay  | 1    |"), "{stdout}");
    assert!(stdout.contains("[ERROR] <sql>:1:8: No field named nope."), "{stdout}");
    let mut changes: Vec<&str> = stdout.lines().filter(|l| l.starts_with("+I[")).collect();
    changes.sort();
    assert_eq!(changes, vec!["+I[u1, 120]", "+I[u1, 200]", "+I[u2, 300]", "+I[u2, 900]"], "{stdout}");
}

/// Processing time: windows over a `PROCTIME()` column close by the wall clock while the job
/// runs (a window still open when the input ends is dropped, as Flink drops pending
/// processing-time timers).
#[test]
fn processing_time_windows_close_by_the_wall_clock() {
    let dir = tempfile::tempdir().unwrap();
    let script = "CREATE TABLE gen (id BIGINT, pt AS PROCTIME()) WITH ('connector' = 'datagen', 'rows-per-second' = '1000', \
                  'number-of-rows' = '4000', 'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '4000');\n\
                  CREATE TABLE counts (window_start STRING, n BIGINT) WITH ('connector' = 'filesystem', 'path' = '${DIR}/out', 'format' = 'csv');\n\
                  INSERT INTO counts SELECT CAST(window_start AS STRING), COUNT(*)\n\
                  FROM TABLE(TUMBLE(TABLE gen, DESCRIPTOR(pt), INTERVAL '1' SECOND)) GROUP BY window_start, window_end;\n";
    let path = write_script(dir.path(), "job.sql", script);
    let (ok, _, stderr) = run(dir.path(), &["run", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let lines = committed_lines(&dir.path().join("out"));
    let counts: Vec<i64> = lines.iter().map(|l| l.rsplit(',').next().unwrap().parse().unwrap()).collect();
    assert!(counts.len() >= 2, "fewer than two windows closed in the 4 s the job ran: {lines:?}");
    let total: i64 = counts.iter().sum();
    assert!(total <= 4000 && counts.iter().all(|n| (1..=2000).contains(n)), "{lines:?}");
    let starts: std::collections::HashSet<&str> = lines.iter().map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(starts.len(), lines.len(), "a window was emitted twice: {lines:?}");
}
