//! Compiling a script: its statements run in order against a [`Session`] (the catalog of
//! tables and views, and the `SET` configuration), and every `INSERT` (or statement set)
//! becomes one job: DataFusion plans its query, and the logical plan is translated into the
//! same JobGraph a YAML job compiles to.
//!
//! ## From logical plan to JobGraph
//! - A table scan becomes the table's source chain: the connector's source (datagen, file,
//!   socket), a `decode` of csv/json lines into the declared columns, and a `calc` that casts
//!   them to the declared types and adds the computed columns.
//! - Projections and filters become `calc` operators (DataFusion physical expressions over
//!   whole batches), chained into the vertex of their input.
//! - An aggregate becomes a `calc` computing its group keys and arguments plus a hidden key
//!   column (`weir.key`, the group key's bytes), a hash shuffle on that column (by key group,
//!   like every keyed edge), and a `group-aggregate` keeping one accumulator row per group in
//!   the job's keyed state backend. Its result is an updating table: rows carry a hidden
//!   `weir.rowkind` column with Flink's row kinds (+I, -U, +U, -D).
//! - The sink gets a last `calc` that orders and casts the query's columns to the sink's.
//!
//! Every operator gets a uid derived from its sink and position, so the state of a job
//! restarted from a savepoint maps back to it as long as the query keeps its shape.

use crate::catalog::{declare_table, Connector, Table, TableFormat};
use crate::error::SqlError;
use crate::operators::spec;
use crate::planner::{coerce, parser_options, Functions, Provider, ShippedExpr};
use crate::script::{parse_script_with_windows, ColumnDdl, Insert, Located, Statement, WindowKind, WindowTvf};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion_common::{Column, DFSchema, DataFusionError};
use datafusion_expr::{Expr, LogicalPlan};
use datafusion_optimizer::analyzer::Analyzer;
use datafusion_sql::planner::{PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::ast::{self, Query};
use datafusion_sql::sqlparser::tokenizer::Location;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use weir_core::config::{keys, Config};
use weir_core::graph::{ChainedOperator, Edge, FileFormat, JobGraph, OperatorSpec, Partitioning, Vertex};

/// The hidden column of an updating stream: the row kind of each row ([`RowKind`]).
pub const ROWKIND: &str = "weir.rowkind";
/// The hidden column a keyed shuffle hashes: the bytes of the row's group key.
pub const KEY: &str = "weir.key";

/// Flink's row kinds, as stored in [`ROWKIND`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum RowKind {
    Insert = 0,
    UpdateBefore = 1,
    UpdateAfter = 2,
    Delete = 3,
}

impl RowKind {
    pub fn short(self) -> &'static str {
        match self {
            RowKind::Insert => "+I",
            RowKind::UpdateBefore => "-U",
            RowKind::UpdateAfter => "+U",
            RowKind::Delete => "-D",
        }
    }

    pub fn from_i8(v: i8) -> Option<Self> {
        Some(match v {
            0 => RowKind::Insert,
            1 => RowKind::UpdateBefore,
            2 => RowKind::UpdateAfter,
            3 => RowKind::Delete,
            _ => return None,
        })
    }
}

/// One job a script submits: an INSERT, a statement set, or a top-level query (whose rows go
/// to stdout).
#[derive(Debug, Clone)]
pub struct CompiledJob {
    pub graph: JobGraph,
    /// The effective configuration: the cluster's, the WITH clauses' job options, the script's
    /// `SET`s as they stood at the statement, then the command line's `-D`.
    pub config: Config,
    /// The job's own settings (WITH-clause job options, `SET`s, `-D`): what a submission
    /// carries above the cluster's configuration.
    pub settings: BTreeMap<String, String>,
    /// Where in the script the job's statement starts.
    pub at: (u64, u64),
    /// A query's result columns (empty for INSERTs).
    pub columns: Vec<String>,
}

/// What a script compiled to.
#[derive(Debug, Clone, Default)]
pub struct CompiledScript {
    pub jobs: Vec<CompiledJob>,
    /// Things the user should know (job options found in WITH clauses, ...).
    pub notices: Vec<String>,
    /// What SHOW TABLES, DESCRIBE and EXPLAIN printed, in order.
    pub output: Vec<String>,
}

/// Compiles a script under `base` (the cluster's configuration) with `overrides` (`-D`) last.
pub fn compile_script(text: &str, origin: &str, base: &Config, overrides: &Config) -> Result<CompiledScript, SqlError> {
    let (statements, windows) = parse_script_with_windows(text, origin)?;
    let mut session = Session::new(origin);
    session.windows = windows.into_iter().map(|w| (w.name.clone(), w)).collect();
    let mut out = CompiledScript::default();
    for s in &statements {
        session.execute(s, base, overrides, &mut out)?;
    }
    out.notices.append(&mut session.notices);
    if out.jobs.is_empty() && out.output.is_empty() {
        return Err(SqlError::new(origin, None, "the script has no INSERT INTO, statement set or query: it defines no job"));
    }
    Ok(out)
}

/// The state of a script (or an interactive session) between statements.
pub struct Session {
    origin: String,
    tables: BTreeMap<String, Table>,
    /// Visible columns of every table and view, for the planner.
    schemas: HashMap<String, SchemaRef>,
    views: HashMap<String, LogicalPlan>,
    /// The window table-valued functions of the script, by the name that replaced them.
    windows: HashMap<String, WindowTvf>,
    /// `SET` values in the order set.
    settings: Vec<(String, String)>,
    /// Job options found in WITH clauses: key → (value, option as written, table).
    with_options: BTreeMap<String, (String, String, String)>,
    notices: Vec<String>,
    /// Where top-level queries send their rows (the interactive client's listener); `None`
    /// prints them to stdout.
    pub collect_to: Option<String>,
}

impl Session {
    pub fn new(origin: &str) -> Self {
        Self {
            origin: origin.to_string(),
            tables: BTreeMap::new(),
            schemas: HashMap::new(),
            views: HashMap::new(),
            windows: HashMap::new(),
            settings: Vec::new(),
            with_options: BTreeMap::new(),
            notices: Vec::new(),
            collect_to: None,
        }
    }

    /// Adds the window functions of statements parsed after the session started (the
    /// interactive client parses one statement at a time).
    pub fn add_windows(&mut self, windows: Vec<WindowTvf>) {
        self.windows.extend(windows.into_iter().map(|w| (w.name.clone(), w)));
    }

    /// Notices gathered so far (WITH-clause job options), taken.
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    /// The `SET` values of the session, in the order set.
    pub fn settings(&self) -> &[(String, String)] {
        &self.settings
    }

    fn err(&self, at: Location, message: impl Into<String>) -> SqlError {
        SqlError::new(&self.origin, Some(at), message)
    }

    fn df_err(&self, at: Location, e: DataFusionError) -> SqlError {
        SqlError::planner(&self.origin, e, at)
    }

    /// Runs one statement: catalog and settings change, jobs and output are added to `out`.
    pub fn execute(&mut self, s: &Located<Statement>, base: &Config, overrides: &Config, out: &mut CompiledScript) -> Result<(), SqlError> {
        let at = s.at;
        match &s.item {
            Statement::Set { key, value } => {
                if weir_core::settings::is_cluster_only_key(key) {
                    return Err(self.err(at, format!("'{key}' is a cluster setting: it cannot be SET for a job")));
                }
                Config::new().set(key, value, &self.origin).map_err(|e| self.err(at, e.to_string()))?;
                self.settings.retain(|(k, _)| k != key);
                self.settings.push((key.clone(), value.clone()));
            }
            Statement::Reset { key: None } => self.settings.clear(),
            Statement::Reset { key: Some(key) } => {
                Config::key_def(key).ok_or_else(|| self.err(at, format!("unknown configuration key '{key}'")))?;
                self.settings.retain(|(k, _)| k != key);
            }
            Statement::CreateTable(ddl) => {
                if self.schemas.contains_key(&ddl.name) {
                    if ddl.if_not_exists {
                        return Ok(());
                    }
                    return Err(self.err(at, format!("table or view '{}' already exists", ddl.name)));
                }
                let declared = declare_table(ddl, at).map_err(|(loc, m)| self.err(if loc.line == 0 { at } else { loc }, m))?;
                for (key, value, option, loc) in declared.job_options {
                    self.job_option_in_with(&ddl.name, key, value, option, loc)?;
                }
                let schema = self.table_schema(&declared.table)?;
                self.schemas.insert(ddl.name.clone(), schema);
                self.tables.insert(ddl.name.clone(), declared.table);
            }
            Statement::CreateView { name, query } => {
                if self.schemas.contains_key(name) {
                    return Err(self.err(at, format!("table or view '{name}' already exists")));
                }
                let plan = self.plan_query(query, at)?;
                let schema = Arc::new(plan_schema(&plan));
                self.schemas.insert(name.clone(), schema);
                self.views.insert(name.clone(), plan);
            }
            Statement::Insert(insert) => {
                let job = self.compile_job(std::slice::from_ref(&Located { at, item: insert.clone() }), None, base, overrides)?;
                out.jobs.push(job);
            }
            Statement::StatementSet(inserts) => {
                let job = self.compile_job(inserts, None, base, overrides)?;
                out.jobs.push(job);
            }
            Statement::Query(query) => {
                let job = self.compile_job(&[], Some((query, at)), base, overrides)?;
                out.jobs.push(job);
            }
            Statement::ShowTables => {
                let mut names: Vec<&String> = self.schemas.keys().collect();
                names.sort();
                out.output.push(names.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("\n"));
            }
            Statement::Describe(name) => {
                let schema = self.schemas.get(name).ok_or_else(|| self.err(at, format!("unknown table or view '{name}'")))?;
                let mut lines = vec![format!("{name}:")];
                for f in schema.fields() {
                    lines.push(format!(
                        "  {} {}{}",
                        f.name(),
                        sql_type_name(f.data_type()),
                        if f.is_nullable() { "" } else { " NOT NULL" }
                    ));
                }
                out.output.push(lines.join("\n"));
            }
            Statement::Explain(inner) => {
                let (inserts, query) = match &inner.item {
                    Statement::Insert(i) => (vec![Located { at: inner.at, item: i.clone() }], None),
                    Statement::StatementSet(set) => (set.clone(), None),
                    Statement::Query(q) => (Vec::new(), Some((q, inner.at))),
                    _ => return Err(self.err(at, "EXPLAIN explains a query, an INSERT or a statement set")),
                };
                let job = self.compile_job(&inserts, query, base, overrides)?;
                out.output.push(explain(&job.graph));
            }
        }
        Ok(())
    }

    /// A job option written in a table's WITH clause: applied to the job (under any `SET`),
    /// with a notice that names the `SET` statement saying the same. Two tables that disagree
    /// are refused.
    fn job_option_in_with(&mut self, table: &str, key: String, value: String, option: String, loc: Location) -> Result<(), SqlError> {
        if weir_core::settings::is_cluster_only_key(&key) {
            return Err(self.err(loc, format!("option '{option}' of table '{table}' is a cluster setting, not a table option")));
        }
        Config::new().set(&key, &value, &self.origin).map_err(|e| self.err(loc, format!("option '{option}' of table '{table}': {e}")))?;
        if let Some((other, _, other_table)) = self.with_options.get(&key) {
            if other != &value {
                return Err(self.err(
                    loc,
                    format!(
                        "option '{option}' of table '{table}' sets '{key}' to '{value}', but table '{other_table}' set it to '{other}': \
                         it is a setting of the whole job, so write it once as SET '{key}' = '...';"
                    ),
                ));
            }
        }
        self.notices.push(format!(
            "{}:{}:{}: option '{option}' of table '{table}' is a job setting, not a table option: it applies to the whole job, \
             as SET '{key}' = '{value}'; would",
            self.origin, loc.line, loc.column
        ));
        self.with_options.insert(key, (value, option, table.to_string()));
        Ok(())
    }

    /// The configuration of a job compiled now, and the job's own settings in it.
    fn job_config(&self, base: &Config, overrides: &Config) -> Result<(Config, BTreeMap<String, String>), SqlError> {
        let mut cfg = base.clone();
        let mut own = BTreeMap::new();
        let mut setting = |cfg: &mut Config, k: &str, v: &str, what: &str| {
            own.insert(k.to_string(), v.to_string());
            cfg.set(k, v, what).map_err(|e| SqlError::new(&self.origin, None, e.to_string()))
        };
        for (k, (v, option, table)) in &self.with_options {
            if !self.settings.iter().any(|(s, _)| s == k) {
                setting(&mut cfg, k, v, &format!("option '{option}' of table '{table}'"))?;
            }
        }
        for (k, v) in &self.settings {
            setting(&mut cfg, k, v, &format!("{}: SET", self.origin))?;
        }
        cfg.merge(overrides);
        own.extend(overrides.explicit().iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok((cfg, own))
    }

    /// The visible columns of a table: declared order, computed columns typed by planning them.
    fn table_schema(&self, table: &Table) -> Result<SchemaRef, SqlError> {
        let computed = self.computed_exprs(table)?;
        let physical = DFSchema::try_from(Schema::new(table.physical.clone())).map_err(|e| self.df_err(table.at, e))?;
        let mut fields = Vec::new();
        for (c, e) in table.columns.iter().zip(&computed) {
            match (c, e) {
                (ColumnDdl::Physical { name, .. }, _) => {
                    fields.push(table.physical.iter().find(|f| f.name() == name).expect("declared").clone())
                }
                (ColumnDdl::Computed { name, at, .. }, Some(e)) => {
                    let (ty, nullable) = crate::planner::type_of(e, &physical).map_err(|e| self.df_err(*at, e))?;
                    fields.push(Field::new(name, ty, nullable));
                }
                (ColumnDdl::Computed { .. }, None) => unreachable!("a computed column has its expression"),
            }
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Each column's expression over the physical columns: `None` for a physical column.
    fn computed_exprs(&self, table: &Table) -> Result<Vec<Option<Expr>>, SqlError> {
        let physical = DFSchema::try_from(Schema::new(table.physical.clone())).map_err(|e| self.df_err(table.at, e))?;
        let tables = HashMap::new();
        let provider = Provider { functions: Functions::get(), tables: &tables };
        let planner = SqlToRel::new_with_options(&provider, parser_options());
        table
            .columns
            .iter()
            .map(|c| match c {
                ColumnDdl::Physical { .. } => Ok(None),
                ColumnDdl::Computed { name, expr, at } => {
                    let e = planner
                        .sql_to_expr(expr.clone(), &physical, &mut PlannerContext::new())
                        .and_then(|e| coerce(e, &physical))
                        .map_err(|e| self.err(*at, format!("computed column '{name}': {}", SqlError::planner("", e, *at).message)))?;
                    Ok(Some(e))
                }
            })
            .collect()
    }

    /// DataFusion's logical plan of a query, type-coerced.
    fn plan_query(&self, query: &Query, at: Location) -> Result<LogicalPlan, SqlError> {
        let mut tables = self.schemas.clone();
        for w in self.windows.values() {
            if let Some(base) = self.schemas.get(&w.table) {
                tables.insert(w.name.clone(), window_schema(base));
            }
        }
        let provider = Provider { functions: Functions::get(), tables: &tables };
        let planner = SqlToRel::new_with_options(&provider, parser_options());
        let plan = planner.sql_statement_to_plan(ast::Statement::Query(Box::new(query.clone()))).map_err(|e| self.df_err(at, e))?;
        Analyzer::new().execute_and_check(plan, Functions::get().options(), |_, _| {}).map_err(|e| self.df_err(at, e))
    }

    /// One job: the INSERTs of `inserts` (or `query`, printed), each query planned and
    /// translated into one shared graph.
    fn compile_job(
        &self,
        inserts: &[Located<Insert>],
        query: Option<(&Box<Query>, Location)>,
        base: &Config,
        overrides: &Config,
    ) -> Result<CompiledJob, SqlError> {
        let (config, settings) = self.job_config(base, overrides)?;
        let at = inserts.first().map(|i| i.at).or(query.map(|q| q.1)).unwrap_or(Location::new(1, 1));
        let mut builder = GraphBuilder::new(self, &config);
        let mut names = Vec::new();
        for insert in inserts {
            let i = &insert.item;
            let table = self.tables.get(&i.table).ok_or_else(|| {
                let what = if self.views.contains_key(&i.table) { "is a view: a view cannot be written to" } else { "does not exist" };
                self.err(i.table_at, format!("table '{}' {what}", i.table))
            })?;
            if !table.connector.is_sink() {
                return Err(self.err(
                    i.table_at,
                    format!("table '{}' uses connector '{}', which cannot be written to", i.table, table.connector.name()),
                ));
            }
            let plan = self.plan_query(&i.query, insert.at)?;
            builder.prefix = format!("{}-{}", i.table, names.iter().filter(|n| *n == &i.table).count());
            let stream = builder.translate(&plan).map_err(|e| e.at(self, insert.at))?;
            builder.sink(stream, table, &i.columns).map_err(|e| e.at(self, insert.at))?;
            names.push(i.table.clone());
        }
        let mut columns = Vec::new();
        if let Some((q, at)) = query {
            let plan = self.plan_query(q, at)?;
            builder.prefix = "query".into();
            let stream = builder.translate(&plan).map_err(|e| e.at(self, at))?;
            columns = stream.schema.fields().iter().map(|f| f.name().clone()).collect();
            match &self.collect_to {
                Some(address) => {
                    builder.collect(stream, address);
                    names.push("client".into());
                }
                None => {
                    builder.print(stream);
                    names.push("stdout".into());
                }
            }
        }
        let name = format!("insert-into_{}", names.join(","));
        let graph = JobGraph { name, max_parallelism: builder.max_parallelism, vertices: builder.vertices, edges: builder.edges };
        Ok(CompiledJob { graph, config, settings, at: (at.line, at.column), columns })
    }
}

/// The input column a shipped projection passes through unchanged (`c3`), if it is one.
fn column_ref(text: &str) -> Option<usize> {
    text.trim_matches('"').strip_prefix('c')?.parse().ok()
}

/// The time bounds of an interval join among the conditions of a join besides its key
/// equalities: comparisons (`<`, `<=`, `>`, `>=`, `BETWEEN`) between a timestamp column of each
/// side, each side optionally plus or minus an interval literal (`o.ts BETWEEN s.ts - INTERVAL
/// '1' HOUR AND s.ts`). The bounds come from the comparisons over the first such pair of
/// columns; others only filter. `None` when there is none: a regular join, whose state is kept.
fn interval_bounds(conditions: &[Expr], ls: &DFSchema, rs: &DFSchema) -> Option<spec::IntervalBounds> {
    use datafusion_expr::Operator as Op;
    let mut comparisons: Vec<(&Expr, Op, &Expr)> = Vec::new();
    for c in conditions {
        match c {
            Expr::BinaryExpr(b) if matches!(b.op, Op::Lt | Op::LtEq | Op::Gt | Op::GtEq) => comparisons.push((&b.left, b.op, &b.right)),
            Expr::Between(b) if !b.negated => {
                comparisons.push((&b.expr, Op::GtEq, &b.low));
                comparisons.push((&b.expr, Op::LtEq, &b.high));
            }
            _ => {}
        }
    }
    let nl = ls.fields().len();
    let time_column = |c: &Column, schema: &DFSchema| {
        let i = schema.index_of_column(c).ok()?;
        matches!(schema.field(i).data_type(), DataType::Timestamp(..)).then_some(i)
    };
    let mut bounds: Option<spec::IntervalBounds> = None;
    for (a, op, b) in comparisons {
        let (Some((ca, oa)), Some((cb, ob))) = (time_term(a), time_term(b)) else { continue };
        // left + x  op  right + y  <=>  left - right  op  y - x (and mirrored).
        let (lt, rt, op, k) = match (time_column(&ca, ls), time_column(&cb, rs), time_column(&cb, ls), time_column(&ca, rs)) {
            (Some(l), Some(r), _, _) => (l, r, op, ob - oa),
            (_, _, Some(l), Some(r)) => (l, r, op.swap()?, oa - ob),
            _ => continue,
        };
        let b = bounds.get_or_insert(spec::IntervalBounds { left_time: lt, right_time: nl + rt, lower: None, upper: None });
        if (b.left_time, b.right_time) != (lt, nl + rt) {
            continue;
        }
        match op {
            Op::Gt | Op::GtEq => b.lower = Some(b.lower.map_or(k, |l| l.max(k))),
            _ => b.upper = Some(b.upper.map_or(k, |u| u.min(k))),
        }
    }
    bounds
}

/// A time column plus or minus a constant interval: the column and the offset in milliseconds.
fn time_term(e: &Expr) -> Option<(Column, i64)> {
    use datafusion_expr::Operator as Op;
    match e {
        Expr::Column(c) => Some((c.clone(), 0)),
        Expr::Cast(c) if matches!(c.field.data_type(), DataType::Timestamp(..)) => time_term(&c.expr),
        Expr::BinaryExpr(b) if matches!(b.op, Op::Plus | Op::Minus) => {
            let (column, offset) = time_term(&b.left)?;
            let d = interval_millis(&b.right)?;
            Some((column, if b.op == Op::Plus { offset.checked_add(d)? } else { offset.checked_sub(d)? }))
        }
        _ => None,
    }
}

/// An interval literal of days, hours, minutes, seconds and whole milliseconds, in milliseconds.
fn interval_millis(e: &Expr) -> Option<i64> {
    use datafusion_common::ScalarValue as S;
    match e {
        Expr::Cast(c) => interval_millis(&c.expr),
        Expr::Literal(S::IntervalDayTime(Some(v)), _) => Some(v.days as i64 * 86_400_000 + v.milliseconds as i64),
        Expr::Literal(S::IntervalMonthDayNano(Some(v)), _) if v.months == 0 && v.nanoseconds % 1_000_000 == 0 => {
            Some(v.days as i64 * 86_400_000 + v.nanoseconds / 1_000_000)
        }
        Expr::Literal(S::DurationMillisecond(Some(v)), _) => Some(*v),
        Expr::Literal(S::DurationSecond(Some(v)), _) => v.checked_mul(1000),
        _ => None,
    }
}

/// The columns a window function adds to its table's.
pub const WINDOW_COLUMNS: [&str; 3] = ["window_start", "window_end", "window_time"];

/// The schema of a window function's rows: its table's, then `window_start`, `window_end` and
/// `window_time` (`window_end` - 1 ms), as TIMESTAMP(3).
fn window_schema(base: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
    for name in WINDOW_COLUMNS {
        fields.push(Field::new(name, DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, None), false));
    }
    Arc::new(Schema::new(fields))
}

/// A plan's output columns as an Arrow schema (unqualified names).
fn plan_schema(plan: &LogicalPlan) -> Schema {
    Schema::new(plan.schema().fields().iter().map(|f| f.as_ref().clone()).collect::<Vec<_>>())
}

/// Flink's name of an Arrow type, for DESCRIBE.
pub fn sql_type_name(t: &DataType) -> String {
    match t {
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING".into(),
        DataType::Binary => "BYTES".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Timestamp(unit, tz) => {
            let p = match unit {
                arrow_schema::TimeUnit::Second => 0,
                arrow_schema::TimeUnit::Millisecond => 3,
                arrow_schema::TimeUnit::Microsecond => 6,
                arrow_schema::TimeUnit::Nanosecond => 9,
            };
            if tz.is_some() {
                format!("TIMESTAMP_LTZ({p})")
            } else {
                format!("TIMESTAMP({p})")
            }
        }
        other => other.to_string(),
    }
}

/// A translation error: a message, at a location if the plan knew one.
pub(crate) struct PlanError {
    message: String,
    at: Option<Location>,
    df: Option<DataFusionError>,
}

impl PlanError {
    fn msg(message: impl Into<String>) -> Self {
        Self { message: message.into(), at: None, df: None }
    }

    fn at(self, session: &Session, fallback: Location) -> SqlError {
        match self.df {
            Some(e) => session.df_err(self.at.unwrap_or(fallback), e),
            None => session.err(self.at.unwrap_or(fallback), self.message),
        }
    }
}

impl From<DataFusionError> for PlanError {
    fn from(e: DataFusionError) -> Self {
        Self { message: String::new(), at: None, df: Some(e) }
    }
}

/// A stream of rows while the graph is built: the vertex whose chain ends with it, its
/// visible columns, and whether its rows carry row kinds.
#[derive(Clone)]
pub(crate) struct Stream {
    vertex: u32,
    schema: SchemaRef,
    updating: bool,
    /// Rows of a window function (they carry window columns).
    windowed: bool,
    /// The columns that identify a row of an updating stream (a group aggregate's keys): every
    /// change of one key's row comes from one subtask, in order.
    unique_key: Option<Vec<usize>>,
}

impl Stream {
    fn df_schema(&self) -> Result<DFSchema, PlanError> {
        Ok(DFSchema::try_from(self.schema.as_ref().clone())?)
    }
}

fn with_hidden(schema: &SchemaRef, updating: bool) -> SchemaRef {
    if !updating {
        return schema.clone();
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(ROWKIND, DataType::Int8, false));
    Arc::new(Schema::new(fields))
}

struct GraphBuilder<'a> {
    session: &'a Session,
    vertices: Vec<Vertex>,
    edges: Vec<Edge>,
    parallelism: u32,
    max_parallelism: u32,
    /// The uid prefix of the INSERT being translated.
    prefix: String,
    /// Whether the window functions translated so far are over processing time.
    processing_time_windows: bool,
    counter: usize,
    /// `table.exec.source.idle-timeout` in milliseconds (0: never idle).
    idle_timeout_ms: u64,
}

impl<'a> GraphBuilder<'a> {
    fn new(session: &'a Session, config: &Config) -> Self {
        Self {
            session,
            vertices: Vec::new(),
            edges: Vec::new(),
            parallelism: config.get(keys::PARALLELISM).parse().unwrap_or(1),
            max_parallelism: config.get(keys::MAX_PARALLELISM).parse().unwrap_or(128),
            prefix: String::new(),
            counter: 0,
            processing_time_windows: false,
            idle_timeout_ms: weir_core::config::parse_duration(config.get(keys::SOURCE_IDLE_TIMEOUT))
                .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64),
        }
    }

    fn operator(&mut self, name: &str, spec: OperatorSpec, output_schema: SchemaRef) -> ChainedOperator {
        self.counter += 1;
        ChainedOperator { name: name.to_string(), uid: format!("{}-{}-{name}", self.prefix, self.counter), spec, output_schema }
    }

    fn sql_spec<T: serde::Serialize>(kind: &str, keyed: bool, spec: &T) -> OperatorSpec {
        OperatorSpec::Sql { kind: kind.to_string(), keyed, spec: serde_json::to_value(spec).expect("SQL specs serialize") }
    }

    /// Appends `op` to the chain of `vertex`.
    fn push(&mut self, vertex: u32, op: ChainedOperator) {
        let v = &mut self.vertices[vertex as usize];
        v.name = format!("{} -> {}", v.name, op.name);
        v.operators.push(op);
    }

    /// A new vertex starting with `op`.
    fn vertex(&mut self, op: ChainedOperator, parallelism: u32) -> u32 {
        let id = self.vertices.len() as u32;
        self.vertices.push(Vertex { id, name: op.name.clone(), parallelism, operators: vec![op] });
        id
    }

    fn edge(&mut self, source: u32, target: u32, partitioning: Partitioning) {
        let id = self.edges.len() as u32;
        self.edges.push(Edge { id, source, target, partitioning });
    }

    /// A `calc` after `input`: `filter` first, then `projections` (text, output field); with
    /// `key`, the hidden key column of those output columns is appended.
    fn calc(
        &mut self,
        input: &Stream,
        name: &str,
        filter: Option<String>,
        projections: Vec<(String, Field)>,
        key: Option<Vec<usize>>,
    ) -> Stream {
        let fields: Vec<Field> = projections.iter().map(|(_, f)| f.clone()).collect();
        let schema = Arc::new(Schema::new(fields));
        let mut batch = with_hidden(&schema, input.updating);
        if key.is_some() {
            let mut f: Vec<Field> = batch.fields().iter().map(|f| f.as_ref().clone()).collect();
            f.push(Field::new(KEY, DataType::Binary, false));
            batch = Arc::new(Schema::new(f));
        }
        // A unique key survives a projection that passes its columns through.
        let unique_key = input.unique_key.as_ref().and_then(|keys| {
            keys.iter().map(|k| projections.iter().position(|(text, _)| column_ref(text) == Some(*k))).collect::<Option<Vec<_>>>()
        });
        let spec = spec::Calc { filter, projections: projections.into_iter().map(|(t, _)| t).collect(), key };
        let op = self.operator(name, Self::sql_spec("calc", false, &spec), batch);
        self.push(input.vertex, op);
        Stream { vertex: input.vertex, schema, updating: input.updating, windowed: input.windowed, unique_key }
    }

    /// Projections that pass every column of `input` through unchanged.
    fn identity(input: &Stream) -> Vec<(String, Field)> {
        input.schema.fields().iter().enumerate().map(|(i, f)| (format!("c{i}"), f.as_ref().clone())).collect()
    }

    fn translate(&mut self, plan: &LogicalPlan) -> Result<Stream, PlanError> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let name = scan.table_name.table().to_string();
                let stream = match (self.session.views.get(&name), self.session.windows.get(&name)) {
                    (Some(view), _) => {
                        let view = view.clone();
                        self.translate(&view)?
                    }
                    (None, Some(window)) => {
                        let window = window.clone();
                        self.window_source(&window)?
                    }
                    (None, None) => self.source(&name)?,
                };
                if !scan.filters.is_empty() {
                    return Err(PlanError::msg("filters pushed into a table scan are not supported"));
                }
                match &scan.projection {
                    None => Ok(stream),
                    Some(indices) => {
                        let all = Self::identity(&stream);
                        let projections = indices.iter().map(|i| all[*i].clone()).collect();
                        Ok(self.calc(&stream, "project", None, projections, None))
                    }
                }
            }
            LogicalPlan::Projection(p) => {
                let input = self.translate(&p.input)?;
                let mut projections = Vec::new();
                for (e, f) in p.expr.iter().zip(p.schema.fields()) {
                    projections.push((ShippedExpr::ship(e, p.input.schema())?, f.as_ref().clone()));
                }
                Ok(self.calc(&input, "calc", None, projections, None))
            }
            LogicalPlan::Filter(f) => {
                let input = self.translate(&f.input)?;
                let predicate = ShippedExpr::ship(&f.predicate, f.input.schema())?;
                let projections = Self::identity(&input);
                Ok(self.calc(&input, "filter", Some(predicate), projections, None))
            }
            LogicalPlan::SubqueryAlias(a) => self.translate(&a.input),
            LogicalPlan::Aggregate(a) => self.aggregate(&a.input, &a.group_expr, &a.aggr_expr, &a.schema),
            LogicalPlan::Distinct(datafusion_expr::Distinct::All(input)) => {
                let group: Vec<Expr> = input.schema().columns().into_iter().map(Expr::Column).collect();
                self.aggregate(input, &group, &[], input.schema())
            }
            LogicalPlan::Join(j) => self.join(j),
            LogicalPlan::Sort(_) => Err(PlanError::msg("ORDER BY is not supported on a stream: its result would never be final")),
            LogicalPlan::Limit(_) => Err(PlanError::msg("LIMIT is not supported on a stream")),
            LogicalPlan::Union(_) => Err(PlanError::msg("UNION is not supported yet")),
            LogicalPlan::Window(_) => Err(PlanError::msg("OVER windows are not supported yet")),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                Err(PlanError::msg("a query must read a table: queries without FROM (or over VALUES) are not supported"))
            }
            other => Err(PlanError::msg(format!("unsupported query construct: {}", other.display()))),
        }
    }

    /// The source chain of table `name`: source, decode for csv/json lines, then a calc to the
    /// declared types and computed columns.
    fn source(&mut self, name: &str) -> Result<Stream, PlanError> {
        let table = self.session.tables.get(name).expect("the planner only scans known tables").clone();
        let physical = Arc::new(Schema::new(table.physical.clone()));
        let (mut stream, source_types) = match &table.connector {
            Connector::Datagen(spec, parallelism) => {
                let generated: Vec<Field> = spec
                    .fields
                    .iter()
                    .map(|f| match f.kind {
                        weir_core::graph::DatagenKind::RandomString { .. } => Field::new(&f.name, DataType::Utf8, false),
                        _ => Field::new(&f.name, DataType::Int64, false),
                    })
                    .collect();
                let schema = Arc::new(Schema::new(generated));
                let op = self.operator("datagen", OperatorSpec::DatagenSource(spec.clone()), schema.clone());
                let v = self.vertex(op, parallelism.unwrap_or(self.parallelism));
                (Stream { vertex: v, schema, updating: false, windowed: false, unique_key: None }, true)
            }
            Connector::Filesystem { path, format, parallelism } => {
                let v = self.line_source(
                    name,
                    OperatorSpec::FileSource { path: path.clone() },
                    *format,
                    parallelism.unwrap_or(self.parallelism),
                )?;
                (Stream { vertex: v, schema: physical.clone(), updating: false, windowed: false, unique_key: None }, false)
            }
            Connector::Socket { host, port, format } => {
                let v = self.line_source(name, OperatorSpec::SocketSource { host: host.clone(), port: *port }, *format, 1)?;
                (Stream { vertex: v, schema: physical.clone(), updating: false, windowed: false, unique_key: None }, false)
            }
            other => return Err(PlanError::msg(format!("table '{name}' uses connector '{}', which cannot be read", other.name()))),
        };
        if source_types {
            // Datagen makes BIGINT and STRING columns: cast them to the declared types.
            let input = stream.df_schema()?;
            let mut projections = Vec::new();
            for (i, f) in table.physical.iter().enumerate() {
                let column = Expr::Column(Column::new_unqualified(stream.schema.field(i).name()));
                let e = if stream.schema.field(i).data_type() == f.data_type() {
                    column
                } else {
                    datafusion_expr::cast(column, f.data_type().clone())
                };
                projections.push((ShippedExpr::ship(&e, &input)?, f.clone()));
            }
            stream = self.calc(&stream, "cast", None, projections, None);
        }
        let computed = self.session.computed_exprs(&table).map_err(|e| PlanError::msg(e.message))?;
        if computed.iter().any(Option::is_some) {
            let input = stream.df_schema()?;
            let visible = self.session.schemas.get(name).expect("declared").clone();
            let mut projections = Vec::new();
            for ((c, e), f) in table.columns.iter().zip(&computed).zip(visible.fields()) {
                let e = match e {
                    Some(e) => e.clone(),
                    None => Expr::Column(Column::new_unqualified(c.name())),
                };
                projections.push((ShippedExpr::ship(&e, &input)?, f.as_ref().clone()));
            }
            stream = self.calc(&stream, "computed-columns", None, projections, None);
        }
        if let Some(wm) = &table.watermark {
            // The watermark expression over the table's columns, and the assigner that emits its
            // largest value periodically.
            let visible = self.session.schemas.get(name).expect("declared").clone();
            let df = DFSchema::try_from(visible.as_ref().clone())?;
            let tables = HashMap::new();
            let provider = Provider { functions: Functions::get(), tables: &tables };
            let planner = SqlToRel::new_with_options(&provider, parser_options());
            let e = planner.sql_to_expr(wm.expr.clone(), &df, &mut PlannerContext::new()).and_then(|e| coerce(e, &df))?;
            if !matches!(crate::planner::type_of(&e, &df)?.0, DataType::Timestamp(..)) {
                return Err(PlanError::msg(format!("the WATERMARK of table '{name}' is not a TIMESTAMP expression")));
            }
            // The table's own `scan.watermark.idle-timeout` wins over the job's setting.
            let idle = table.idle_timeout.map_or(self.idle_timeout_ms, |d| d.as_millis().min(u64::MAX as u128) as u64);
            let spec = spec::Watermark { expr: ShippedExpr::ship(&e, &df)?, idle_timeout_ms: (idle > 0).then_some(idle) };
            let op = self.operator("watermark", Self::sql_spec("watermark", false, &spec), stream.schema.clone());
            self.push(stream.vertex, op);
        }
        Ok(stream)
    }

    /// The rows of a window function: its table's rows, each with the window columns of every
    /// window it falls into (`window-assign`). The time column must be the table's watermarked
    /// time attribute, so that the windows close as event time passes them.
    fn window_source(&mut self, w: &WindowTvf) -> Result<Stream, PlanError> {
        let Some(table) = self.session.tables.get(&w.table) else {
            return Err(PlanError::msg(format!(
                "window functions read a table, and '{}' is not one (views are not supported here yet)",
                w.table
            )));
        };
        // A computed `PROCTIME()` column is a processing-time attribute: its windows close by the
        // wall clock instead of the watermark.
        let processing_time = table.columns.iter().any(|c| {
            matches!(c, ColumnDdl::Computed { name, expr, .. } if name == &w.time_column
                && matches!(expr, ast::Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("PROCTIME")))
        });
        if !processing_time && table.watermark.as_ref().map(|wm| wm.column.as_str()) != Some(w.time_column.as_str()) {
            return Err(PlanError::msg(format!(
                "the window's time column '{}' of table '{}' is not a time attribute: declare `WATERMARK FOR {} AS ...` (event time) \
                 or make it a `PROCTIME()` computed column (processing time)",
                w.time_column, w.table, w.time_column
            )));
        }
        let input = self.source(&w.table)?;
        let time = input
            .schema
            .index_of(&w.time_column)
            .map_err(|_| PlanError::msg(format!("table '{}' has no column '{}'", w.table, w.time_column)))?;
        if !matches!(input.schema.field(time).data_type(), DataType::Timestamp(..)) {
            return Err(PlanError::msg(format!("the window's time column '{}' is not a TIMESTAMP", w.time_column)));
        }
        let schema = window_schema(&input.schema);
        let spec = spec::WindowAssign { kind: w.kind, time, size_ms: w.size_ms, step_ms: w.step_ms };
        let name = match w.kind {
            WindowKind::Tumble => "tumble",
            WindowKind::Hop => "hop",
            WindowKind::Cumulate => "cumulate",
        };
        let op = self.operator(name, Self::sql_spec("window-assign", false, &spec), schema.clone());
        self.push(input.vertex, op);
        self.processing_time_windows |= processing_time;
        Ok(Stream { vertex: input.vertex, schema, updating: false, windowed: true, unique_key: None })
    }

    /// A regular inner join on equal keys: both inputs become rows of one schema (the left
    /// columns, the right columns with the other side's left NULL, a side marker, the join key
    /// columns), hash-partitioned by the key into one `join` operator, which keeps each side's
    /// rows per key in keyed state and emits every new pair. Conditions other than equalities
    /// filter the pairs afterwards.
    fn join(&mut self, j: &datafusion_expr::logical_plan::Join) -> Result<Stream, PlanError> {
        use datafusion_expr::{JoinType, Operator as Op};
        let outer = match j.join_type {
            JoinType::Inner => [false, false],
            JoinType::Left => [true, false],
            JoinType::Right => [false, true],
            JoinType::Full => [true, true],
            other => return Err(PlanError::msg(format!("{other} joins are not supported yet (inner, left, right and full joins are)"))),
        };
        let (ls, rs) = (j.left.schema().clone(), j.right.schema().clone());
        // DataFusion leaves `a.x = b.y` in the join's filter until its optimizer runs: take the
        // equalities between the two sides out of it.
        let mut on: Vec<(Expr, Expr)> = j.on.clone();
        let mut rest = Vec::new();
        if let Some(f) = &j.filter {
            for c in datafusion_expr::utils::split_conjunction(f) {
                let side =
                    |e: &Expr, schema: &DFSchema| e.column_refs().iter().all(|c| schema.has_column(c)) && !e.column_refs().is_empty();
                match c {
                    Expr::BinaryExpr(b) if b.op == Op::Eq && side(&b.left, &ls) && side(&b.right, &rs) => {
                        on.push((*b.left.clone(), *b.right.clone()))
                    }
                    Expr::BinaryExpr(b) if b.op == Op::Eq && side(&b.left, &rs) && side(&b.right, &ls) => {
                        on.push((*b.right.clone(), *b.left.clone()))
                    }
                    other => rest.push(other.clone()),
                }
            }
        }
        if on.is_empty() {
            return Err(PlanError::msg(
                "a join needs an equality between the two sides (JOIN ... ON a.k = b.k): Weir does not run cross joins",
            ));
        }
        if outer != [false, false] && !rest.is_empty() {
            return Err(PlanError::msg(
                "an outer join's ON may only hold equalities between the two sides for now; move other conditions into WHERE or a subquery",
            ));
        }
        let left = self.translate(&j.left)?;
        let right = self.translate(&j.right)?;
        if left.updating || right.updating {
            return Err(PlanError::msg("a join of an updating result (an aggregate) is not supported yet"));
        }
        let nullable = |f: &Field| f.clone().with_nullable(true);
        let (nl, nr) = (left.schema.fields().len(), right.schema.fields().len());
        let mut union: Vec<Field> = j.schema.fields().iter().map(|f| nullable(f)).collect();
        union.push(Field::new("__side", DataType::Int8, false));
        for (i, (l, _)) in on.iter().enumerate() {
            let (ty, _) = crate::planner::type_of(l, &ls)?;
            union.push(Field::new(format!("__k{i}"), ty, true));
        }
        let keys: Vec<usize> = (nl + nr + 1..union.len()).collect();
        let mut inputs = Vec::new();
        for (side, (stream, schema)) in [(&left, &ls), (&right, &rs)].into_iter().enumerate() {
            let mut projections = Vec::new();
            for (i, f) in union.iter().enumerate().take(nl + nr) {
                let own = if side == 0 { i < nl } else { i >= nl };
                let text = if own {
                    format!("c{}", if side == 0 { i } else { i - nl })
                } else {
                    ShippedExpr::ship(
                        &datafusion_expr::cast(Expr::Literal(datafusion_common::ScalarValue::Null, None), f.data_type().clone()),
                        schema,
                    )?
                };
                projections.push((text, f.clone()));
            }
            projections.push((
                ShippedExpr::ship(&datafusion_expr::cast(datafusion_expr::lit(side as i64), DataType::Int8), schema)?,
                union[nl + nr].clone(),
            ));
            for (i, (l, r)) in on.iter().enumerate() {
                let e = if side == 0 { l.clone() } else { r.clone() };
                let target = union[nl + nr + 1 + i].data_type().clone();
                let e = if crate::planner::type_of(&e, schema)?.0 == target { e } else { datafusion_expr::cast(e, target) };
                projections.push((ShippedExpr::ship(&e, schema)?, union[nl + nr + 1 + i].clone()));
            }
            let name = if side == 0 { "join-left" } else { "join-right" };
            inputs.push(self.calc(stream, name, None, projections, Some(keys.clone())));
        }
        let schema: SchemaRef = Arc::new(Schema::new(j.schema.fields().iter().map(|f| nullable(f)).collect::<Vec<_>>()));
        let updating = outer != [false, false];
        let interval = if updating { None } else { interval_bounds(&rest, &ls, &rs) };
        let spec = spec::Join { left: nl, right: nr, outer, interval };
        let op = self.operator("join", Self::sql_spec("join", true, &spec), with_hidden(&schema, updating));
        let v = self.vertex(op, self.parallelism);
        for input in &inputs {
            self.edge(input.vertex, v, Partitioning::Hash { key: KEY.to_string() });
        }
        let mut stream = Stream { vertex: v, schema, updating, windowed: left.windowed || right.windowed, unique_key: None };
        if let Some(filter) = datafusion_expr::utils::conjunction(rest) {
            let predicate = ShippedExpr::ship(&filter, &j.schema)?;
            let projections = Self::identity(&stream);
            stream = self.calc(&stream, "join-filter", Some(predicate), projections, None);
        }
        Ok(stream)
    }

    /// A vertex starting with `source` (which reads lines) and a `decode` of `format` into the
    /// physical columns of table `name`.
    fn line_source(&mut self, name: &str, source: OperatorSpec, format: TableFormat, parallelism: u32) -> Result<u32, PlanError> {
        let format = format
            .lines()
            .ok_or_else(|| PlanError::msg(format!("table '{name}': reading the debezium-json format is not supported yet")))?;
        let table = self.session.tables.get(name).expect("the planner only scans known tables");
        let physical = Arc::new(Schema::new(table.physical.clone()));
        let line = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]));
        let kind = if matches!(source, OperatorSpec::SocketSource { .. }) { "socket" } else { "file" };
        let op = self.operator(kind, source, line);
        let v = self.vertex(op, parallelism);
        let decode = spec::Decode { format, table: name.to_string() };
        let op = self.operator("decode", Self::sql_spec("decode", false, &decode), physical);
        self.push(v, op);
        Ok(v)
    }

    /// A grouped aggregate: a calc of keys and arguments, a hash shuffle by the key, and the
    /// updating `group-aggregate`.
    fn aggregate(&mut self, input_plan: &LogicalPlan, group: &[Expr], aggregates: &[Expr], out: &DFSchema) -> Result<Stream, PlanError> {
        let input = self.translate(input_plan)?;
        if input.updating {
            return Err(PlanError::msg("an aggregate over an updating result (an aggregate of an aggregate) is not supported yet"));
        }
        let in_schema = input_plan.schema();
        let mut pre = Vec::new();
        for (i, g) in group.iter().enumerate() {
            if matches!(g, Expr::GroupingSet(_)) {
                return Err(PlanError::msg("GROUPING SETS, CUBE and ROLLUP are not supported"));
            }
            let (ty, nullable) = crate::planner::type_of(g, in_schema)?;
            pre.push((ShippedExpr::ship(g, in_schema)?, Field::new(format!("k{i}"), ty, nullable)));
        }
        let mut specs = Vec::new();
        for (j, e) in aggregates.iter().enumerate() {
            let inner = match e {
                Expr::Alias(a) => a.expr.as_ref(),
                e => e,
            };
            let Expr::AggregateFunction(f) = inner else {
                return Err(PlanError::msg(format!("unsupported aggregate {e}")));
            };
            let function = match f.func.name().to_ascii_lowercase().as_str() {
                "count" => spec::AggFunction::Count,
                "sum" => spec::AggFunction::Sum,
                "min" => spec::AggFunction::Min,
                "max" => spec::AggFunction::Max,
                "avg" | "mean" => spec::AggFunction::Avg,
                other => {
                    return Err(PlanError::msg(format!(
                        "aggregate function {} is not supported in a streaming aggregate (Weir has COUNT, SUM, MIN, MAX and AVG)",
                        other.to_uppercase()
                    )))
                }
            };
            let p = &f.params;
            if p.filter.is_some() || !p.order_by.is_empty() {
                return Err(PlanError::msg(format!("{e}: FILTER and ORDER BY inside an aggregate are not supported")));
            }
            let arg = match p.args.as_slice() {
                [] => None,
                [Expr::Literal(v, _)] if function == spec::AggFunction::Count && !v.is_null() => None,
                // COUNT(*): DataFusion keeps the wildcard as the argument.
                #[allow(deprecated)]
                [Expr::Wildcard { .. }] if function == spec::AggFunction::Count => None,
                [arg] => {
                    let (ty, nullable) = crate::planner::type_of(arg, in_schema)?;
                    pre.push((ShippedExpr::ship(arg, in_schema)?, Field::new(format!("a{j}"), ty, nullable)));
                    Some(pre.len() - 1)
                }
                _ => return Err(PlanError::msg(format!("{e}: aggregates of several arguments are not supported"))),
            };
            if p.distinct && function != spec::AggFunction::Count {
                return Err(PlanError::msg(format!("{e}: DISTINCT is supported in COUNT only")));
            }
            let output = out.field(group.len() + j).data_type().clone();
            specs.push(spec::Aggregate { function, arg, distinct: p.distinct, output: output.to_string() });
        }
        let keys: Vec<usize> = (0..group.len()).collect();
        let window_key = |name: &str| group.iter().position(|g| matches!(g, Expr::Column(c) if c.name == name) && input.windowed);
        let window = (window_key("window_start"), window_key("window_end"));
        // The typed path: one NOT NULL BIGINT or STRING key, COUNT(*) and COUNT/SUM of NOT NULL
        // BIGINT columns. The state backend's typed aggregate tables run it (as the YAML
        // `count`/`sum` steps), partitioned by the key column itself.
        let non_null_int64 = |i: Option<usize>| i.is_none_or(|i| pre[i].1.data_type() == &DataType::Int64 && !pre[i].1.is_nullable());
        let typed = window == (None, None)
            && group.len() == 1
            && matches!(pre[0].1.data_type(), DataType::Int64 | DataType::Utf8)
            && !pre[0].1.is_nullable()
            && specs.iter().all(|a| {
                !a.distinct
                    && match a.function {
                        spec::AggFunction::Count => non_null_int64(a.arg),
                        spec::AggFunction::Sum => a.arg.is_some() && non_null_int64(a.arg) && a.output == DataType::Int64.to_string(),
                        _ => false,
                    }
            });
        let pre_stream = self.calc(&input, "group-keys", None, pre, (!typed).then_some(keys));
        let fields: Vec<Field> = out.fields().iter().map(|f| f.as_ref().clone()).collect();
        let schema = Arc::new(Schema::new(fields));
        match window {
            (Some(_), Some(end)) => {
                let spec = spec::WindowAggregate {
                    keys: group.len(),
                    window_end: end,
                    aggregates: specs,
                    processing_time: self.processing_time_windows,
                };
                let op = self.operator("window-aggregate", Self::sql_spec("window-aggregate", true, &spec), schema.clone());
                let v = self.vertex(op, self.parallelism);
                self.edge(pre_stream.vertex, v, Partitioning::Hash { key: KEY.to_string() });
                return Ok(Stream { vertex: v, schema, updating: false, windowed: false, unique_key: None });
            }
            (None, None) => {}
            _ => return Err(PlanError::msg("an aggregate over a window function must GROUP BY both window_start and window_end")),
        }
        let spec = spec::GroupAggregate { keys: group.len(), aggregates: specs, typed };
        let op = self.operator("group-aggregate", Self::sql_spec("group-aggregate", true, &spec), with_hidden(&schema, true));
        let v = self.vertex(op, self.parallelism);
        let key = if typed { pre_stream.schema.field(0).name().clone() } else { KEY.to_string() };
        self.edge(pre_stream.vertex, v, Partitioning::Hash { key });
        Ok(Stream { vertex: v, schema, updating: true, windowed: false, unique_key: Some((0..group.len()).collect()) })
    }

    /// Writes `stream` into sink `table`: a calc that puts the query's columns in the sink's
    /// order (`columns` lists the ones written; the others get NULL) and casts them.
    fn sink(&mut self, stream: Stream, table: &Table, columns: &[String]) -> Result<(), PlanError> {
        if stream.updating && !table.connector.accepts_updates() {
            return Err(PlanError::msg(format!(
                "table '{}' (connector '{}') only takes appended rows, but the query's result is updated as rows arrive \
                 (it aggregates); write it to a print or blackhole table, or aggregate over windows",
                table.name,
                table.connector.name()
            )));
        }
        let targets: Vec<&Field> = match columns {
            [] => table.physical.iter().collect(),
            names => names
                .iter()
                .map(|n| {
                    table
                        .physical
                        .iter()
                        .find(|f| f.name() == n)
                        .ok_or_else(|| PlanError::msg(format!("table '{}' has no physical column '{n}'", table.name)))
                })
                .collect::<Result<_, _>>()?,
        };
        if targets.len() != stream.schema.fields().len() {
            return Err(PlanError::msg(format!(
                "the query gives {} columns, but table '{}' takes {} ({})",
                stream.schema.fields().len(),
                table.name,
                targets.len(),
                targets.iter().map(|f| format!("{} {}", f.name(), sql_type_name(f.data_type()))).collect::<Vec<_>>().join(", ")
            )));
        }
        let input = stream.df_schema()?;
        let mut projections = Vec::new();
        for target in &table.physical {
            let e = match targets.iter().position(|t| t.name() == target.name()) {
                Some(i) => {
                    let source = stream.schema.field(i);
                    let column = Expr::Column(Column::new_unqualified(source.name()));
                    if source.data_type() == target.data_type() {
                        column
                    } else if arrow_cast::can_cast_types(source.data_type(), target.data_type()) {
                        datafusion_expr::cast(column, target.data_type().clone())
                    } else {
                        return Err(PlanError::msg(format!(
                            "column '{}' of table '{}' is {}, and the query's column {} ('{}', {}) cannot be cast to it",
                            target.name(),
                            table.name,
                            sql_type_name(target.data_type()),
                            i + 1,
                            source.name(),
                            sql_type_name(source.data_type())
                        )));
                    }
                }
                None => datafusion_expr::cast(Expr::Literal(datafusion_common::ScalarValue::Null, None), target.data_type().clone()),
            };
            projections.push((ShippedExpr::ship(&e, &input)?, target.clone().with_nullable(true)));
        }
        // Upsert mode, as Flink's planner picks for a sink with a primary key: when the key is
        // the query's unique key (a GROUP BY's keys), every change of a key's row reaches the
        // sink from one subtask in order, and the `+U` that follows a `-U` replaces the row,
        // so the `-U` rows are dropped.
        let upsert = stream.updating
            && match (&table.primary_key, &stream.unique_key) {
                (Some(pk), Some(unique)) => {
                    let pk: Option<Vec<usize>> = pk.iter().map(|k| targets.iter().position(|t| t.name() == k)).collect();
                    pk.is_some_and(|mut pk| {
                        let mut unique = unique.clone();
                        pk.sort_unstable();
                        unique.sort_unstable();
                        pk == unique
                    })
                }
                _ => false,
            };
        let stream = self.calc(&stream, "to-sink", None, projections, None);
        if upsert {
            let op = self.operator("upsert", Self::sql_spec("upsert", false, &serde_json::Value::Null), with_hidden(&stream.schema, true));
            self.push(stream.vertex, op);
        }
        let empty = Arc::new(Schema::empty());
        let op = match &table.connector {
            Connector::Filesystem { path, format: TableFormat::DebeziumJson, .. } => {
                let row = arrow_schema::Fields::from(table.physical.iter().map(|f| f.clone().with_nullable(true)).collect::<Vec<_>>());
                let changelog = Arc::new(Schema::new(vec![
                    Field::new("before", DataType::Struct(row.clone()), true),
                    Field::new("after", DataType::Struct(row), true),
                    Field::new("op", DataType::Utf8, false),
                ]));
                let op = self.operator("debezium-json", Self::sql_spec("debezium-encode", false, &serde_json::Value::Null), changelog);
                self.push(stream.vertex, op);
                self.operator("filesystem", OperatorSpec::FileSink { path: path.clone(), format: FileFormat::Json }, empty)
            }
            Connector::Filesystem { path, format, .. } => {
                let format = format.lines().unwrap_or(FileFormat::Csv);
                self.operator("filesystem", OperatorSpec::FileSink { path: path.clone(), format }, empty)
            }
            Connector::Blackhole => self.operator("blackhole", OperatorSpec::BlackholeSink, empty),
            Connector::Print { identifier } => {
                let spec = spec::Print { identifier: identifier.clone() };
                self.operator("print", Self::sql_spec("print", false, &spec), empty)
            }
            other => return Err(PlanError::msg(format!("connector '{}' cannot be written to", other.name()))),
        };
        self.push(stream.vertex, op);
        Ok(())
    }

    /// Prints a top-level query's rows (`+I[...]`) to stdout.
    /// Sends a top-level query's rows to the SQL client listening at `address`.
    fn collect(&mut self, stream: Stream, address: &str) {
        // The whole result goes to one client connection: one subtask, fed by all of the query's.
        let spec = spec::Collect { address: address.to_string() };
        let op = self.operator("collect", Self::sql_spec("collect", false, &spec), Arc::new(Schema::empty()));
        let v = self.vertex(op, 1);
        self.edge(stream.vertex, v, Partitioning::Rebalance);
    }

    fn print(&mut self, stream: Stream) {
        let op = self.operator("print", Self::sql_spec("print", false, &spec::Print { identifier: None }), Arc::new(Schema::empty()));
        self.push(stream.vertex, op);
    }
}

/// EXPLAIN's text: the job's vertices (parallelism, chained operators, which keep state) and
/// the edges between them with their partitioning.
pub fn explain(graph: &JobGraph) -> String {
    let mut out = format!("== Job Graph: {} ==\n", graph.name);
    for v in &graph.vertices {
        out.push_str(&format!("vertex {} (parallelism {}):\n", v.id, v.parallelism));
        for op in &v.operators {
            let detail = match &op.spec {
                OperatorSpec::Sql { spec, .. } => spec.to_string(),
                other => format!("{other:?}"),
            };
            let state = if op.spec.is_stateful() { "  [keyed state]" } else { "" };
            out.push_str(&format!("  {} (uid {}){state}: {detail}\n", op.name, op.uid));
        }
    }
    for e in &graph.edges {
        let how = match &e.partitioning {
            Partitioning::Hash { key } => format!("hash({key})"),
            other => format!("{other:?}").to_lowercase(),
        };
        out.push_str(&format!("edge {} -> {}: {how}\n", e.source, e.target));
    }
    out
}
