//! `weir sql`: the interactive SQL client, in the manner of Flink's SQL client.
//!
//! Statements are read at a prompt (with line editing and a history file when stdin is a
//! terminal; line by line from a pipe otherwise) and end with `;`. `SET`, `RESET`, `CREATE`,
//! `SHOW TABLES`, `DESCRIBE` and `EXPLAIN` act on the client's session; an `INSERT` (or a
//! statement set) is submitted as a job and its id printed; a `SELECT` runs as a job whose rows
//! come back to the client over TCP (the plan's `collect` sink connects to a listener the client
//! opened for it), shown the way `sql-client.execution.result-mode` says:
//!
//! - `table` (the default): the result as a table, kept up to date as rows are inserted,
//!   updated and retracted: redrawn at most every 200 ms on a terminal, printed once at the
//!   end otherwise;
//! - `changelog`: every change as it arrives, with its row kind (`+I`, `-U`, `+U`, `-D`);
//! - `tableau`: the same changes as rows of one growing table.
//!
//! Ctrl-C cancels a running query and returns to the prompt; `QUIT;` or end of input leaves.

use crate::client::{self, GraphSubmit, JobManagerEndpoint};
use anyhow::Result;
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use weir_core::config::Config;
use weir_sql::{CompiledScript, Session};

/// How a query's result is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResultMode {
    Table,
    Changelog,
    Tableau,
}

const RESULT_MODE: &str = "sql-client.execution.result-mode";

/// Where statements come from.
enum Input {
    Terminal(Box<rustyline::DefaultEditor>, Option<std::path::PathBuf>),
    Lines(std::io::Lines<std::io::StdinLock<'static>>),
}

impl Input {
    fn open() -> Self {
        if std::io::stdin().is_terminal() {
            if let Ok(mut editor) = rustyline::DefaultEditor::new() {
                let history = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".weir_sql_history"));
                if let Some(h) = &history {
                    let _ = editor.load_history(h);
                }
                return Input::Terminal(Box::new(editor), history);
            }
        }
        Input::Lines(std::io::stdin().lock().lines())
    }

    /// The next line, or `None` at the end of input.
    fn line(&mut self, prompt: &str) -> Option<String> {
        match self {
            Input::Terminal(editor, _) => match tokio::task::block_in_place(|| editor.readline(prompt)) {
                Ok(line) => Some(line),
                Err(rustyline::error::ReadlineError::Interrupted) => Some(String::new()),
                Err(_) => None,
            },
            Input::Lines(lines) => lines.next().and_then(Result::ok),
        }
    }

    fn remember(&mut self, statement: &str) {
        if let Input::Terminal(editor, history) = self {
            let _ = editor.add_history_entry(statement);
            if let Some(h) = history {
                let _ = editor.save_history(h);
            }
        }
    }

    fn interactive(&self) -> bool {
        matches!(self, Input::Terminal(..))
    }
}

/// Runs the client against the JobManager at `address` until `QUIT;` or the end of input.
/// Returns 1 if a statement failed and the input was not a terminal (a piped script), else 0.
pub async fn run(address: &JobManagerEndpoint, base: &Config, overrides: &Config) -> Result<i32> {
    let mut input = Input::open();
    let interactive = input.interactive();
    if interactive {
        println!("Weir SQL client. End statements with ';'; QUIT; leaves. JobManager: {address}");
    }
    let mut session = Session::new("<sql>");
    let mut mode = ResultMode::Table;
    let mut buffer = String::new();
    let mut failed = false;
    loop {
        let prompt = if buffer.is_empty() { "Weir SQL> " } else { "> " };
        let Some(line) = input.line(prompt) else { break };
        if buffer.is_empty() && line.trim().is_empty() {
            continue;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !statement_complete(&buffer) {
            continue;
        }
        let statement = std::mem::take(&mut buffer);
        input.remember(statement.trim());
        let word = statement.trim().trim_end_matches(';').trim().to_ascii_uppercase();
        if word == "QUIT" || word == "EXIT" {
            break;
        }
        if let Err(e) = execute(&statement, &mut session, &mut mode, address, base, overrides, interactive).await {
            println!("[ERROR] {}", crate::error_text(&e));
            failed = true;
        }
    }
    Ok(if failed && !interactive { 1 } else { 0 })
}

/// Whether `text` ends a statement: its last non-blank character is a `;` outside quotes.
fn statement_complete(text: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut last = None;
    for line in text.lines() {
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '-' && chars.peek() == Some(&'-') => break,
                None if c == '\'' || c == '"' || c == '`' => quote = Some(c),
                None => {}
            }
            if quote.is_none() && !c.is_whitespace() {
                last = Some(c);
            }
        }
    }
    quote.is_none() && last == Some(';')
}

/// Runs one statement of the session.
async fn execute(
    text: &str,
    session: &mut Session,
    mode: &mut ResultMode,
    address: &JobManagerEndpoint,
    base: &Config,
    overrides: &Config,
    interactive: bool,
) -> Result<()> {
    // The client's own settings never reach the job.
    if let Some(value) = client_setting(text) {
        *mode = match value.to_ascii_lowercase().as_str() {
            "table" => ResultMode::Table,
            "changelog" => ResultMode::Changelog,
            "tableau" => ResultMode::Tableau,
            other => return Err(anyhow::anyhow!("'{RESULT_MODE}' is 'table', 'changelog' or 'tableau', not '{other}'")),
        };
        println!("[INFO] Execute statement succeeded.");
        return Ok(());
    }
    if text.trim().trim_end_matches(';').trim().eq_ignore_ascii_case("SET") {
        for (k, v) in session.settings() {
            println!("'{k}' = '{v}'");
        }
        return Ok(());
    }
    let (statements, windows) = weir_sql::script::parse_script_with_windows(text, "<sql>")?;
    session.add_windows(windows);
    for statement in &statements {
        // A query's rows come back through a listener opened for it.
        let mut listener = match statement.item {
            weir_sql::script::Statement::Query(_) => Some(tokio::net::TcpListener::bind((collect_host(address), 0)).await?),
            _ => None,
        };
        session.collect_to = listener.as_ref().map(|l| l.local_addr().map(|a| a.to_string())).transpose()?;
        let mut out = CompiledScript::default();
        session.execute(statement, base, overrides, &mut out)?;
        for notice in session.take_notices() {
            println!("[INFO] {notice}");
        }
        for text in &out.output {
            println!("{text}");
        }
        for job in out.jobs {
            weir_core::settings::JobSettings::from_config(&job.config)?;
            let columns = job.columns.clone();
            let submit = GraphSubmit { graph: job.graph, settings: job.settings };
            match listener.take() {
                None => {
                    println!("[INFO] Submitting SQL update statement to the cluster...");
                    let id = client::submit_graph(address, submit, "sql client").await?;
                    println!("[INFO] SQL update statement has been successfully submitted to the cluster:\nJob ID: {id}");
                }
                Some(listener) => {
                    let id = client::submit_graph(address, submit, "sql client").await?;
                    show_result(listener, &id, &columns, *mode, address, interactive).await?;
                }
            }
        }
        if out.output.is_empty()
            && matches!(
                statement.item,
                weir_sql::script::Statement::Set { .. }
                    | weir_sql::script::Statement::Reset { .. }
                    | weir_sql::script::Statement::CreateTable(_)
                    | weir_sql::script::Statement::CreateView { .. }
            )
        {
            println!("[INFO] Execute statement succeeded.");
        }
    }
    Ok(())
}

/// The value of `SET 'sql-client.…' = 'value';`, the client's own setting.
fn client_setting(text: &str) -> Option<String> {
    let t = text.trim().trim_end_matches(';').trim();
    let rest = t.get(..3).filter(|s| s.eq_ignore_ascii_case("SET")).map(|_| t[3..].trim())?;
    let (key, value) = rest.split_once('=')?;
    let unquote = |s: &str| s.trim().trim_matches('\'').trim_matches('"').to_string();
    (unquote(key) == RESULT_MODE).then(|| unquote(value))
}

/// The address the collect sink connects back to: loopback for a JobManager on this machine,
/// else this machine's address on the route to the JobManager.
fn collect_host(address: &JobManagerEndpoint) -> std::net::IpAddr {
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let Some((host, port)) = address.address.rsplit_once(':') else { return loopback };
    if host == "localhost" || host.starts_with("127.") {
        return loopback;
    }
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect((host, port.parse().unwrap_or(6123))).map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(loopback)
}

/// A query's result as the client shows it.
struct ResultView<'a> {
    mode: ResultMode,
    columns: &'a [String],
    interactive: bool,
    /// The materialized result (table mode): each distinct row, how many times it is there.
    table: BTreeMap<String, (Vec<serde_json::Value>, usize)>,
    changes: u64,
    drawn: Instant,
}

impl ResultView<'_> {
    /// One line from the collect sink: a row kind, a tab, the row as a JSON array.
    fn apply(&mut self, line: &str) {
        let Some((kind, row)) = line.split_once('\t') else { return };
        let values: Vec<serde_json::Value> = serde_json::from_str(row).unwrap_or_default();
        self.changes += 1;
        match self.mode {
            ResultMode::Changelog => println!("{kind}[{}]", values.iter().map(cell).collect::<Vec<_>>().join(", ")),
            ResultMode::Tableau => println!("| {kind} | {} |", values.iter().map(cell).collect::<Vec<_>>().join(" | ")),
            ResultMode::Table => {
                if kind.starts_with('+') {
                    self.table.entry(row.to_string()).or_insert_with(|| (values, 0)).1 += 1;
                } else if let Some(entry) = self.table.get_mut(row) {
                    entry.1 -= 1;
                    if entry.1 == 0 {
                        self.table.remove(row);
                    }
                }
                if self.interactive && self.drawn.elapsed() >= Duration::from_millis(200) {
                    draw(&self.table, self.columns, true);
                    self.drawn = Instant::now();
                }
            }
        }
    }
}

/// Receives job `id`'s rows and shows them until the job ends or Ctrl-C cancels it.
async fn show_result(
    listener: tokio::net::TcpListener,
    id: &str,
    columns: &[String],
    mode: ResultMode,
    address: &JobManagerEndpoint,
    interactive: bool,
) -> Result<()> {
    let mut view =
        ResultView { mode, columns, interactive, table: BTreeMap::new(), changes: 0, drawn: Instant::now() - Duration::from_secs(1) };
    if mode == ResultMode::Tableau {
        println!("| op | {} |", columns.join(" | "));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // The collect subtask connects again after a restart: every connection is read. Readers
    // hold a sender each until their connection ends.
    let acceptor = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(socket).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let outcome = loop {
        tokio::select! {
            Some(line) = rx.recv() => view.apply(&line),
            _ = poll.tick() => {
                let (state, failure) = client::job_state(address, id).await?;
                if matches!(state, "FINISHED" | "FAILED" | "CANCELED") {
                    break (state, failure);
                }
            }
            _ = tokio::signal::ctrl_c() => {
                client::request_cancel(address, id).await?;
                break ("CANCELED", None);
            }
        }
    };
    // The job ended: read what its connections still hold, until they close.
    acceptor.abort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        view.apply(&line);
    }
    if mode == ResultMode::Table {
        draw(&view.table, columns, interactive);
    }
    let _ = std::io::stdout().flush();
    match outcome {
        ("FAILED", failure) => Err(anyhow::anyhow!("the query's job failed: {}", failure.unwrap_or_default())),
        (state, _) => {
            let rows: usize = view.table.values().map(|(_, n)| n).sum();
            match mode {
                ResultMode::Table => println!("[INFO] Query {state}: {} changes, {rows} rows in the result.", view.changes),
                _ => println!("[INFO] Query {state}: {} changes.", view.changes),
            }
            Ok(())
        }
    }
}

/// A cell's text: strings without their JSON quotes, NULL for null.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "NULL".into(),
        other => other.to_string(),
    }
}

/// Prints the materialized result (clearing the screen first on a terminal).
fn draw(table: &BTreeMap<String, (Vec<serde_json::Value>, usize)>, columns: &[String], clear: bool) {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::ASCII_MARKDOWN);
    t.set_header(columns.iter().map(String::as_str));
    for (values, n) in table.values() {
        for _ in 0..*n {
            t.add_row(values.iter().map(cell));
        }
    }
    if clear {
        print!("\x1b[2J\x1b[H");
    }
    println!("{t}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_ends_with_a_semicolon_outside_quotes_and_comments() {
        assert!(statement_complete("SELECT 1;\n"));
        assert!(statement_complete("SELECT\n  1 ;  \n"));
        assert!(!statement_complete("SELECT ';'\n"));
        assert!(!statement_complete("SELECT 1 -- done;\n"));
        assert!(statement_complete("SELECT 1; -- done\n"));
        assert!(!statement_complete("CREATE TABLE t (\n"));
    }

    #[test]
    fn the_result_mode_is_the_clients_own_setting() {
        assert_eq!(client_setting("SET 'sql-client.execution.result-mode' = 'changelog';").as_deref(), Some("changelog"));
        assert_eq!(client_setting("set sql-client.execution.result-mode = tableau"), Some("tableau".into()));
        assert_eq!(client_setting("SET 'parallelism.default' = '2';"), None);
    }
}
