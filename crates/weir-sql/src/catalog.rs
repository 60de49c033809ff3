//! The tables and views a script defines: each table's columns as Arrow fields, its watermark
//! and primary key, and its connector with the options Flink's connectors take (checked here,
//! so a misspelt option fails naming it, as Flink's "Unsupported options found").
//!
//! The catalog lives as long as the script (or the interactive session): Weir has no
//! persistent catalog, like Flink's default in-memory one.

use crate::script::{ColumnDdl, TableDdl};
use arrow_schema::{DataType, Field, TimeUnit};
use datafusion_sql::sqlparser::ast::{self, ExactNumberInfo, TimezoneInfo};
use datafusion_sql::sqlparser::tokenizer::Location;
use std::collections::BTreeMap;
use weir_core::graph::{DatagenField, DatagenKind, DatagenSpec, FileFormat};

/// A table as `CREATE TABLE` declared it.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    /// Every column in the order declared: physical ones with their type, computed ones with
    /// their expression (typed when a query plans them).
    pub columns: Vec<ColumnDdl>,
    /// The physical columns (what the connector reads or writes), as Arrow fields.
    pub physical: Vec<Field>,
    pub watermark: Option<crate::script::WatermarkDdl>,
    pub primary_key: Option<Vec<String>>,
    pub connector: Connector,
    /// `scan.watermark.idle-timeout`: a source subtask without rows this long is idle.
    pub idle_timeout: Option<std::time::Duration>,
    /// Where the table was declared.
    pub at: Location,
}

/// A connector and its options.
#[derive(Debug, Clone, PartialEq)]
pub enum Connector {
    /// `datagen`, at `scan.parallelism` if set.
    Datagen(DatagenSpec, Option<u32>),
    /// `filesystem`: a file or directory of `format` rows, read at `scan.parallelism` if set;
    /// as a sink, transactional files committed at checkpoints (exactly-once).
    Filesystem {
        path: String,
        format: TableFormat,
        parallelism: Option<u32>,
    },
    /// `socket`: rows of `format` read from a TCP server (one subtask), as Flink's example
    /// connector.
    Socket {
        host: String,
        port: u16,
        format: TableFormat,
    },
    /// `print`: rows to stdout as `+I[...]`, prefixed with `print-identifier`.
    Print {
        identifier: Option<String>,
    },
    Blackhole,
}

/// The `format` of a filesystem or socket table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Csv,
    Json,
    /// Flink's `debezium-json`, as a sink: a changelog, one JSON object per row change
    /// (`{"before": ..., "after": ..., "op": "c"|"d"}`), so an updating result can be written
    /// to files exactly once.
    DebeziumJson,
}

impl TableFormat {
    /// The line format of a source or an append-only sink.
    pub fn lines(self) -> Option<FileFormat> {
        match self {
            TableFormat::Csv => Some(FileFormat::Csv),
            TableFormat::Json => Some(FileFormat::Json),
            TableFormat::DebeziumJson => None,
        }
    }
}

impl Connector {
    pub fn name(&self) -> &'static str {
        match self {
            Connector::Datagen(..) => "datagen",
            Connector::Filesystem { .. } => "filesystem",
            Connector::Socket { .. } => "socket",
            Connector::Print { .. } => "print",
            Connector::Blackhole => "blackhole",
        }
    }

    pub fn is_source(&self) -> bool {
        matches!(self, Connector::Datagen(..) | Connector::Filesystem { .. } | Connector::Socket { .. })
    }

    pub fn is_sink(&self) -> bool {
        matches!(self, Connector::Filesystem { .. } | Connector::Print { .. } | Connector::Blackhole)
    }

    /// Whether the sink takes updates (`-U`/`+U`/`-D` rows) as well as inserts.
    pub fn accepts_updates(&self) -> bool {
        matches!(self, Connector::Print { .. } | Connector::Blackhole | Connector::Filesystem { format: TableFormat::DebeziumJson, .. })
    }
}

/// Checkpoint and state options that tutorials put into a table's `WITH` clause, though they
/// are settings of the whole job in Flink. Weir applies them to the job, with a notice naming
/// the `SET` statement that says the same; each maps to its configuration key and how its
/// value converts.
pub const JOB_OPTIONS_IN_WITH: &[(&str, &str, &str)] = &[
    ("checkpoint.interval.ms", weir_core::config::keys::CHECKPOINT_INTERVAL, "ms"),
    ("checkpoint.timeout.ms", weir_core::config::keys::CHECKPOINT_TIMEOUT, "ms"),
    ("checkpoint.min-pause.ms", weir_core::config::keys::CHECKPOINT_MIN_PAUSE, "ms"),
    ("checkpoint.mode", weir_core::config::keys::CHECKPOINT_MODE, ""),
    ("state.backend", weir_core::config::keys::STATE_BACKEND, ""),
    ("max.parallelism", weir_core::config::keys::MAX_PARALLELISM, ""),
    ("parallelism", weir_core::config::keys::PARALLELISM, ""),
];

/// What `CREATE TABLE` made: the table, and the job settings its `WITH` clause carried.
#[derive(Debug)]
pub struct Declared {
    pub table: Table,
    /// (configuration key, value, the option as written) for each job option of the WITH clause.
    pub job_options: Vec<(String, String, String, Location)>,
}

/// Builds a table from its DDL: types mapped to Arrow, columns and watermark checked, connector
/// options checked. Errors carry the location of what they are about.
pub fn declare_table(ddl: &TableDdl, at: Location) -> Result<Declared, (Location, String)> {
    let mut seen = std::collections::HashSet::new();
    let mut physical = Vec::new();
    for c in &ddl.columns {
        if !seen.insert(c.name().to_string()) {
            return Err((c.at(), format!("column '{}' is declared twice in table '{}'", c.name(), ddl.name)));
        }
        if let ColumnDdl::Physical { name, ty, not_null, at } = c {
            let arrow = arrow_type(ty).map_err(|e| (*at, format!("column '{name}': {e}")))?;
            physical.push(Field::new(name, arrow, !not_null));
        }
    }
    if let Some(w) = &ddl.watermark {
        if !seen.contains(&w.column) {
            return Err((w.at, format!("the WATERMARK is for column '{}', which table '{}' does not have", w.column, ddl.name)));
        }
    }
    if let Some(pk) = &ddl.primary_key {
        if let Some(missing) = pk.iter().find(|k| !seen.contains(k.as_str())) {
            return Err((at, format!("the PRIMARY KEY names column '{missing}', which table '{}' does not have", ddl.name)));
        }
    }
    let mut options: BTreeMap<String, (String, Location)> = BTreeMap::new();
    let mut job_options = Vec::new();
    for (k, v, loc) in &ddl.options {
        if let Some((_, key, unit)) = JOB_OPTIONS_IN_WITH.iter().find(|(o, _, _)| o == k) {
            job_options.push((key.to_string(), format!("{v}{unit}"), k.clone(), *loc));
            continue;
        }
        if weir_core::config::Config::key_def(k).is_some() {
            job_options.push((k.clone(), v.clone(), k.clone(), *loc));
            continue;
        }
        if options.insert(k.clone(), (v.clone(), *loc)).is_some() {
            return Err((*loc, format!("option '{k}' is given twice")));
        }
    }
    let idle_timeout = match take(&mut options, "scan.watermark.idle-timeout") {
        None => None,
        Some((v, loc)) => Some(
            weir_core::config::parse_duration(&v)
                .map_err(|e| (loc, format!("option 'scan.watermark.idle-timeout' of table '{}': {e}", ddl.name)))?,
        ),
    };
    let connector = connector(&ddl.name, &mut options, &physical, at)?;
    if idle_timeout.is_some() && !connector.is_source() {
        return Err((
            at,
            format!("option 'scan.watermark.idle-timeout' of table '{}': connector '{}' is not a source", ddl.name, connector.name()),
        ));
    }
    if let Some((k, (_, loc))) = options.iter().next() {
        return Err((*loc, format!("unsupported option '{k}' for connector '{}' of table '{}'", connector.name(), ddl.name)));
    }
    let table = Table {
        name: ddl.name.clone(),
        columns: ddl.columns.clone(),
        physical,
        watermark: ddl.watermark.clone(),
        primary_key: ddl.primary_key.clone(),
        connector,
        idle_timeout,
        at,
    };
    Ok(Declared { table, job_options })
}

type Options = BTreeMap<String, (String, Location)>;

fn take(options: &mut Options, key: &str) -> Option<(String, Location)> {
    options.remove(key)
}

fn take_number<T: std::str::FromStr>(options: &mut Options, key: &str) -> Result<Option<T>, (Location, String)> {
    match take(options, key) {
        None => Ok(None),
        Some((v, loc)) => v.trim().parse().map(Some).map_err(|_| (loc, format!("option '{key}' must be a number, not '{v}'"))),
    }
}

fn format_option(options: &mut Options, table: &str, at: Location) -> Result<TableFormat, (Location, String)> {
    match take(options, "format") {
        None => Err((at, format!("table '{table}' needs the option 'format' ('csv', 'json' or 'debezium-json')"))),
        Some((f, loc)) => match f.as_str() {
            "csv" => Ok(TableFormat::Csv),
            "json" => Ok(TableFormat::Json),
            "debezium-json" => Ok(TableFormat::DebeziumJson),
            other => Err((loc, format!("unsupported format '{other}': Weir has 'csv', 'json' and 'debezium-json'"))),
        },
    }
}

fn connector(table: &str, options: &mut Options, physical: &[Field], at: Location) -> Result<Connector, (Location, String)> {
    let Some((name, loc)) = take(options, "connector") else {
        return Err((at, format!("table '{table}' has no 'connector' option in its WITH clause")));
    };
    Ok(match name.as_str() {
        "datagen" => {
            let parallelism = take_number::<u32>(options, "scan.parallelism")?;
            Connector::Datagen(datagen(table, options, physical)?, parallelism)
        }
        "filesystem" => {
            let path = take(options, "path").ok_or_else(|| (at, format!("table '{table}' needs the option 'path'")))?.0;
            let format = format_option(options, table, at)?;
            let parallelism = take_number::<u32>(options, "scan.parallelism")?;
            Connector::Filesystem { path, format, parallelism }
        }
        "socket" => {
            let host = take(options, "hostname").ok_or_else(|| (at, format!("table '{table}' needs the option 'hostname'")))?.0;
            let port = take_number::<u16>(options, "port")?.ok_or_else(|| (at, format!("table '{table}' needs the option 'port'")))?;
            let format = format_option(options, table, at)?;
            Connector::Socket { host, port, format }
        }
        "print" => {
            let identifier = take(options, "print-identifier").map(|(v, _)| v);
            if let Some((v, loc)) = take(options, "standard-error") {
                if v != "false" {
                    return Err((loc, "'standard-error' = 'true' is not supported: print writes to stdout".into()));
                }
            }
            Connector::Print { identifier }
        }
        "blackhole" => Connector::Blackhole,
        other => return Err((loc, format!("unknown connector '{other}': Weir has datagen, filesystem, socket, print and blackhole"))),
    })
}

/// Flink's datagen options: `rows-per-second` (default 10000), `number-of-rows`, and per
/// field `fields.<name>.kind` (`random` or `sequence`), `.min`/`.max` (random numbers),
/// `.length` (random strings), `.start`/`.end` (sequences).
fn datagen(table: &str, options: &mut Options, physical: &[Field]) -> Result<DatagenSpec, (Location, String)> {
    let rows_per_second = take_number::<u64>(options, "rows-per-second")?.unwrap_or(10_000);
    let number_of_rows = take_number::<u64>(options, "number-of-rows")?;
    let mut fields = Vec::new();
    for f in physical {
        let name = f.name();
        let kind = take(options, &format!("fields.{name}.kind"));
        let key = |suffix: &str| format!("fields.{name}.{suffix}");
        let sequence = match &kind {
            None => false,
            Some((k, _)) if k == "random" => false,
            Some((k, _)) if k == "sequence" => true,
            Some((k, loc)) => return Err((*loc, format!("'{}' must be 'random' or 'sequence', not '{k}'", key("kind")))),
        };
        let kind = if sequence {
            let start = take_number::<i64>(options, &key("start"))?;
            let end = take_number::<i64>(options, &key("end"))?;
            let (Some(start), Some(end)) = (start, end) else {
                return Err((
                    kind.map(|k| k.1).unwrap_or(Location::new(0, 0)),
                    format!("a sequence field needs '{}' and '{}'", key("start"), key("end")),
                ));
            };
            if !(f.data_type().is_integer() || matches!(f.data_type(), DataType::Utf8)) {
                return Err((Location::new(0, 0), format!("datagen cannot make a sequence of {} (field '{name}')", f.data_type())));
            }
            DatagenKind::Sequence { start, end: Some(end) }
        } else {
            match f.data_type() {
                DataType::Utf8 => DatagenKind::RandomString { length: take_number::<usize>(options, &key("length"))?.unwrap_or(100) },
                t if t.is_integer() || t.is_floating() || matches!(t, DataType::Boolean | DataType::Decimal128(..)) => {
                    let (lo, hi) = default_range(t);
                    let min = take_number::<i64>(options, &key("min"))?.unwrap_or(lo);
                    let max = take_number::<i64>(options, &key("max"))?.unwrap_or(hi);
                    DatagenKind::RandomInt { min, max }
                }
                other => {
                    return Err((
                        Location::new(0, 0),
                        format!(
                            "datagen cannot generate {other} (field '{name}' of table '{table}'); declare it as a computed column \
                             instead, e.g. `{name} AS PROCTIME()`"
                        ),
                    ))
                }
            }
        };
        fields.push(DatagenField { name: name.clone(), kind });
    }
    let seed = table.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    Ok(DatagenSpec { fields, rows_per_second: Some(rows_per_second), number_of_rows, seed })
}

/// A random field's range when `min`/`max` are not given: the type's range, as Flink's
/// datagen (booleans 0..1; floating and decimal fields whole numbers in 0..100).
fn default_range(t: &DataType) -> (i64, i64) {
    match t {
        DataType::Int8 => (i8::MIN as i64, i8::MAX as i64),
        DataType::Int16 => (i16::MIN as i64, i16::MAX as i64),
        DataType::Int32 => (i32::MIN as i64, i32::MAX as i64),
        DataType::Boolean => (0, 1),
        t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => (0, 100),
        _ => (i64::MIN, i64::MAX),
    }
}

/// The Arrow type of a SQL type, by Flink's names.
pub fn arrow_type(ty: &ast::DataType) -> Result<DataType, String> {
    use ast::DataType as T;
    Ok(match ty {
        T::TinyInt(_) => DataType::Int8,
        T::SmallInt(_) => DataType::Int16,
        T::Int(_) | T::Integer(_) => DataType::Int32,
        T::BigInt(_) => DataType::Int64,
        T::Boolean | T::Bool => DataType::Boolean,
        T::Float(_) | T::Real | T::Float4 => DataType::Float32,
        T::Double(_) | T::DoublePrecision | T::Float8 | T::Float64 => DataType::Float64,
        T::String(_) | T::Varchar(_) | T::Char(_) | T::CharVarying(_) | T::Character(_) | T::Text | T::Nvarchar(_) => DataType::Utf8,
        T::Bytes(_) | T::Varbinary(_) | T::Binary(_) | T::Bytea => DataType::Binary,
        T::Date => DataType::Date32,
        T::Decimal(info) | T::Numeric(info) | T::Dec(info) => {
            let (p, s) = match info {
                ExactNumberInfo::None => (10, 0),
                ExactNumberInfo::Precision(p) => (*p, 0),
                ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s as u64),
            };
            if p == 0 || p > 38 || s > p {
                return Err(format!("DECIMAL({p}, {s}) is out of range: precision 1 to 38, scale up to the precision"));
            }
            DataType::Decimal128(p as u8, s as i8)
        }
        T::Timestamp(precision, tz) => {
            let unit = time_unit(*precision)?;
            match tz {
                TimezoneInfo::None | TimezoneInfo::WithoutTimeZone => DataType::Timestamp(unit, None),
                _ => DataType::Timestamp(unit, Some("UTC".into())),
            }
        }
        T::Custom(name, args) => {
            let n = name.to_string().to_ascii_uppercase();
            match n.as_str() {
                "TIMESTAMP_LTZ" => {
                    let precision = args.first().and_then(|a| a.parse().ok());
                    DataType::Timestamp(time_unit(precision)?, Some("UTC".into()))
                }
                "BYTES" => DataType::Binary,
                _ => return Err(format!("unsupported type {ty}")),
            }
        }
        other => return Err(format!("unsupported type {other}")),
    })
}

/// TIMESTAMP(p): milliseconds up to 3 digits of precision (Flink's event-time default),
/// micro- and nanoseconds above.
fn time_unit(precision: Option<u64>) -> Result<TimeUnit, String> {
    Ok(match precision.unwrap_or(3) {
        0..=3 => TimeUnit::Millisecond,
        4..=6 => TimeUnit::Microsecond,
        7..=9 => TimeUnit::Nanosecond,
        p => return Err(format!("TIMESTAMP({p}): the precision is at most 9")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{parse_script, Statement};

    fn declare(sql: &str) -> Result<Declared, (Location, String)> {
        let s = parse_script(sql, "t.sql").unwrap();
        let Statement::CreateTable(ddl) = &s[0].item else { panic!("table expected") };
        declare_table(ddl, s[0].at)
    }

    #[test]
    fn flinks_datagen_options_map_to_the_datagen_source() {
        let d = declare(
            "CREATE TABLE t (id BIGINT, name STRING, n INT) WITH ('connector' = 'datagen', 'rows-per-second' = '5', \
             'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '10', 'fields.name.length' = '3', \
             'fields.n.min' = '1', 'fields.n.max' = '4', 'checkpoint.interval.ms' = '500')",
        )
        .unwrap();
        let Connector::Datagen(spec, _) = &d.table.connector else { panic!("datagen expected") };
        assert_eq!(spec.rows_per_second, Some(5));
        assert_eq!(spec.fields[0].kind, DatagenKind::Sequence { start: 1, end: Some(10) });
        assert_eq!(spec.fields[1].kind, DatagenKind::RandomString { length: 3 });
        assert_eq!(spec.fields[2].kind, DatagenKind::RandomInt { min: 1, max: 4 });
        assert_eq!(d.job_options[0].0, "execution.checkpointing.interval");
        assert_eq!(d.job_options[0].1, "500ms");
        assert_eq!(d.table.physical[2].data_type(), &DataType::Int32);
    }

    #[test]
    fn unknown_options_and_connectors_are_named() {
        let e = declare("CREATE TABLE t (a INT) WITH ('connector' = 'datagen', 'rows-per-secnd' = '5')").unwrap_err();
        assert!(e.1.contains("unsupported option 'rows-per-secnd'"), "{}", e.1);
        assert_eq!((e.0.line, e.0.column), (1, 55));
        let e = declare("CREATE TABLE t (a INT) WITH ('connector' = 'kafka')").unwrap_err();
        assert!(e.1.contains("unknown connector 'kafka'"), "{}", e.1);
        let e = declare("CREATE TABLE t (a INT) WITH ('connector' = 'filesystem', 'path' = '/x')").unwrap_err();
        assert!(e.1.contains("'format'"), "{}", e.1);
    }
}
