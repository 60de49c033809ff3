//! Job files: the YAML pipeline users write, and its compilation to a [`JobGraph`].
//!
//! A job file is a linear `pipeline` of steps; each step is a source, a transform, a `key_by`
//! or a sink. Compilation infers every step's output schema (so a misspelt column is caught
//! before anything runs), decides each step's parallelism, and chains consecutive steps into
//! one vertex while the edge between them is `forward` with equal parallelism. A `key_by`
//! makes the next edge `hash`; a change of parallelism makes it `rebalance`.

use crate::config::{keys, Config, ConfigError};
use crate::graph::*;
use crate::settings::is_cluster_only_key;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde_norway::{Mapping, Value};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{origin}: not a valid job file: {reason}")]
    Syntax { origin: String, reason: String },
    #[error("{origin}: step {step} ({name}): {reason}")]
    Step { origin: String, step: usize, name: String, reason: String },
    #[error("{origin}: {reason}")]
    Pipeline { origin: String, reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A parsed job file, before compilation.
#[derive(Debug, Clone)]
pub struct JobFile {
    pub name: String,
    pub config: Config,
    steps: Vec<Step>,
    origin: String,
}

#[derive(Debug, Clone)]
struct Step {
    index: usize,
    name: String,
    kind: StepKind,
    parallelism: Option<u32>,
    uid: Option<String>,
}

#[derive(Debug, Clone)]
enum StepKind {
    Operator(RawOp),
    KeyBy(String),
    Rebalance,
}

/// An operator as written, before its columns are resolved against the input schema.
#[derive(Debug, Clone)]
enum RawOp {
    Datagen(DatagenSpec),
    Socket { host: String, port: u16 },
    File { path: String },
    Split { column: Option<String> },
    Upper { column: Option<String> },
    Lower { column: Option<String> },
    Filter { expr: String },
    Select { columns: Vec<String> },
    Throttle { rows_per_second: u64 },
    Agg { kind: AggKind, field: Option<String> },
    Print,
    FileSink { path: String, format: FileFormat },
    Blackhole,
}

const TRANSFORMS: &[&str] =
    &["split", "upper", "lower", "filter", "select", "throttle", "key_by", "rebalance", "count", "sum", "min", "max"];
const SOURCES: &[&str] = &["datagen", "socket", "file"];
const SINKS: &[&str] = &["print", "file", "blackhole"];
const COMMON_STEP_KEYS: &[&str] = &["parallelism", "uid", "name"];

impl JobFile {
    /// Parses a job file's text. `origin` (usually the path) prefixes every error.
    pub fn parse(text: &str, origin: &str) -> Result<Self, JobError> {
        let syntax = |reason: String| JobError::Syntax { origin: origin.to_string(), reason };
        let doc: Value = serde_norway::from_str(text).map_err(|e| syntax(e.to_string()))?;
        let map = doc.as_mapping().ok_or_else(|| syntax("expected a mapping with `name` and `pipeline`".into()))?;
        for k in map.keys() {
            let k = k.as_str().unwrap_or("");
            if !["name", "parallelism", "config", "pipeline"].contains(&k) {
                return Err(syntax(format!("unknown top-level key '{k}' (expected name, parallelism, config, pipeline)")));
            }
        }
        let name = match map.get("name") {
            None => "job".to_string(),
            Some(v) => scalar_text(v).ok_or_else(|| syntax("`name` must be text".into()))?,
        };
        let mut config = Config::new();
        if let Some(p) = map.get("parallelism") {
            let p = scalar_text(p).ok_or_else(|| syntax("`parallelism` must be a number".into()))?;
            config.set(keys::PARALLELISM, &p, &format!("{origin}: parallelism"))?;
        }
        if let Some(c) = map.get("config") {
            if !c.is_mapping() && !c.is_null() {
                return Err(syntax("`config` must be a mapping of configuration keys to values".into()));
            }
            config.apply_yaml(c, &format!("{origin}: config"))?;
            if let Some(key) = config.explicit().keys().find(|k| is_cluster_only_key(k)) {
                return Err(syntax(format!(
                    "`config` sets '{key}', a cluster setting: set it in the cluster's configuration, not in a job"
                )));
            }
        }
        let pipeline = map
            .get("pipeline")
            .ok_or_else(|| syntax("missing `pipeline` (the list of steps)".into()))?
            .as_sequence()
            .ok_or_else(|| syntax("`pipeline` must be a list of steps".into()))?;
        let mut steps = Vec::with_capacity(pipeline.len());
        for (i, raw) in pipeline.iter().enumerate() {
            steps.push(parse_step(i + 1, raw, origin)?);
        }
        Ok(JobFile { name, config, steps, origin: origin.to_string() })
    }

    /// Compiles the pipeline to a JobGraph under `config` (the cluster's configuration with
    /// this job's `config:` section and overrides already applied).
    pub fn compile(&self, config: &Config) -> Result<JobGraph, JobError> {
        let origin = &self.origin;
        let pipe_err = |reason: String| JobError::Pipeline { origin: origin.clone(), reason };
        if self.steps.is_empty() {
            return Err(pipe_err("the pipeline is empty".into()));
        }
        let default_p = config.int(keys::PARALLELISM) as u32;
        let max_p = config.int(keys::MAX_PARALLELISM) as u32;

        let mut vertices: Vec<Vertex> = Vec::new();
        let mut edges: Vec<Edge> = Vec::new();
        let mut schema: SchemaRef = Arc::new(Schema::empty());
        let mut pending_edge: Option<Partitioning> = None;
        let mut pending_key: Option<(String, usize)> = None;
        let mut finished = false;
        let mut uids = std::collections::HashSet::new();

        for (pos, step) in self.steps.iter().enumerate() {
            let step_err = |reason: String| JobError::Step { origin: origin.clone(), step: step.index, name: step.name.clone(), reason };
            if finished {
                return Err(step_err("nothing may follow a sink".into()));
            }
            let op = match &step.kind {
                StepKind::KeyBy(key) => {
                    if pos == 0 {
                        return Err(step_err("the pipeline must start with a source".into()));
                    }
                    let field = schema
                        .field_with_name(key)
                        .map_err(|_| step_err(format!("no column '{key}' to key by; columns are {}", columns(&schema))))?;
                    if !matches!(field.data_type(), DataType::Utf8 | DataType::Int64) {
                        return Err(step_err(format!("cannot key by '{key}' of type {}", field.data_type())));
                    }
                    pending_edge = Some(Partitioning::Hash { key: key.clone() });
                    pending_key = Some((key.clone(), step.index));
                    continue;
                }
                StepKind::Rebalance => {
                    pending_edge = Some(Partitioning::Rebalance);
                    continue;
                }
                StepKind::Operator(op) => op,
            };
            let is_source = matches!(op, RawOp::Datagen(_) | RawOp::Socket { .. } | RawOp::File { .. });
            if pos == 0 && !is_source {
                return Err(step_err(format!("the pipeline must start with a source ({})", SOURCES.join(", "))));
            }
            if pos > 0 && is_source {
                return Err(step_err("a source can only be the first step".into()));
            }
            let keyed = matches!(op, RawOp::Agg { .. });
            let key = match (keyed, pending_key.take()) {
                (true, Some((k, _))) => Some(k),
                (true, None) => return Err(step_err("a keyed aggregate needs a `key_by` step before it".into())),
                (false, Some((_, kb_index))) => {
                    return Err(JobError::Step {
                        origin: origin.clone(),
                        step: kb_index,
                        name: "key_by".into(),
                        reason: "key_by must be followed by count, sum, min or max".into(),
                    })
                }
                (false, None) => None,
            };
            let spec = resolve(op, &schema, key).map_err(step_err)?;
            let output_schema = output_schema(&spec, &schema);
            finished = spec.is_sink();

            let mut parallelism = step.parallelism.unwrap_or(default_p);
            if let Some(limit) = spec.max_parallelism() {
                if step.parallelism.is_some_and(|p| p > limit) {
                    return Err(step_err(format!("this source cannot run in parallel (parallelism at most {limit})")));
                }
                parallelism = parallelism.min(limit);
            }
            if parallelism > max_p {
                return Err(step_err(format!("parallelism {parallelism} exceeds pipeline.max-parallelism {max_p}")));
            }
            let uid = match &step.uid {
                Some(u) => u.clone(),
                None => format!("{}-{}", step.name, step.index),
            };
            if !uids.insert(uid.clone()) {
                return Err(step_err(format!("uid '{uid}' is used twice")));
            }
            let chained = ChainedOperator { name: step.name.clone(), uid, spec, output_schema: output_schema.clone() };

            let partitioning = match pending_edge.take() {
                Some(p) => Some(p),
                None if vertices.is_empty() => None,
                None => {
                    let prev = vertices.last().expect("vertices is not empty");
                    if prev.parallelism == parallelism {
                        None // chain
                    } else {
                        Some(Partitioning::Rebalance)
                    }
                }
            };
            match partitioning {
                // The vertex's name (`a -> b -> c`) is joined once at the end: appending here
                // would copy it once per chained step, quadratic in a long chain.
                None if !vertices.is_empty() => vertices.last_mut().expect("vertices is not empty").operators.push(chained),
                _ => {
                    let id = vertices.len() as u32;
                    if let Some(p) = partitioning {
                        edges.push(Edge { id: edges.len() as u32, source: id - 1, target: id, partitioning: p });
                    }
                    vertices.push(Vertex { id, name: chained.name.clone(), parallelism, operators: vec![chained] });
                }
            }
            schema = output_schema;
        }
        if let Some((_, idx)) = pending_key {
            return Err(JobError::Step {
                origin: origin.clone(),
                step: idx,
                name: "key_by".into(),
                reason: "key_by must be followed by count, sum, min or max".into(),
            });
        }
        if !finished {
            return Err(pipe_err(format!("the pipeline must end with a sink ({})", SINKS.join(", "))));
        }
        for v in &mut vertices {
            v.name = v.operators.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(" -> ");
        }
        Ok(JobGraph { name: self.name.clone(), max_parallelism: max_p, vertices, edges })
    }
}

fn columns(schema: &Schema) -> String {
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads one step. A step is a mapping whose operator key (`source`, `sink`, or a transform
/// name) says what it is; the other keys are its parameters.
fn parse_step(index: usize, raw: &Value, origin: &str) -> Result<Step, JobError> {
    let err = |name: &str, reason: String| JobError::Step { origin: origin.to_string(), step: index, name: name.to_string(), reason };
    let map = raw.as_mapping().ok_or_else(|| err("?", "a step must be a mapping like `- source: datagen`".into()))?;
    let mut kinds: Vec<&str> = Vec::new();
    for k in map.keys() {
        let k = k.as_str().ok_or_else(|| err("?", "step keys must be text".into()))?;
        if k == "source" || k == "sink" || TRANSFORMS.contains(&k) {
            kinds.push(k);
        }
    }
    let kind = match kinds.as_slice() {
        [one] => *one,
        [] => {
            let keys: Vec<_> = map.keys().filter_map(|k| k.as_str()).collect();
            return Err(err(
                keys.first().copied().unwrap_or("?"),
                format!("unknown operator (steps are `source: ...`, `sink: ...` or one of {})", TRANSFORMS.join(", ")),
            ));
        }
        many => return Err(err(many[0], format!("a step has one operator, found {}", many.join(" and ")))),
    };
    let parallelism = match map.get("parallelism") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|p| *p >= 1 && *p <= u32::MAX as u64)
                .ok_or_else(|| err(kind, "`parallelism` must be a whole number of at least 1".into()))? as u32,
        ),
    };
    let uid = map.get("uid").map(|v| scalar_text(v).unwrap_or_default());
    let value = map.get(kind).expect("kind was found among the keys");

    // Parameters: for `source:`/`sink:` the step's other keys; for transforms the value of
    // the operator key (a mapping, a scalar shorthand, or `{}`), and no other keys.
    let (name, params, shorthand) = match kind {
        "source" | "sink" => {
            let name = value.as_str().ok_or_else(|| err(kind, format!("`{kind}` must name a connector")))?.to_string();
            let mut params = Mapping::new();
            for (k, v) in map {
                let ks = k.as_str().unwrap_or("");
                if ks != kind && !COMMON_STEP_KEYS.contains(&ks) {
                    params.insert(k.clone(), v.clone());
                }
            }
            (name, params, None)
        }
        _ => {
            for k in map.keys() {
                let ks = k.as_str().unwrap_or("");
                if ks != kind && !COMMON_STEP_KEYS.contains(&ks) {
                    return Err(err(kind, format!("unknown key '{ks}' beside `{kind}` (write parameters as `{kind}: {{{ks}: ...}}`)")));
                }
            }
            match value {
                Value::Mapping(m) => (kind.to_string(), m.clone(), None),
                Value::Null => (kind.to_string(), Mapping::new(), None),
                other => (kind.to_string(), Mapping::new(), scalar_text(other)),
            }
        }
    };
    let p = Params { map: &params, step: index, name: &name, origin };
    let step_kind = match (kind, name.as_str()) {
        ("source", "datagen") => StepKind::Operator(RawOp::Datagen(parse_datagen(&p)?)),
        ("source", "socket") => {
            p.allow(&["host", "port"])?;
            let port = p.int("port")?.ok_or_else(|| p.err("missing `port`"))?;
            let port = u16::try_from(port).map_err(|_| p.err("`port` must be between 0 and 65535"))?;
            StepKind::Operator(RawOp::Socket { host: p.text("host")?.unwrap_or_else(|| "localhost".into()), port })
        }
        ("source", "file") => {
            p.allow(&["path"])?;
            StepKind::Operator(RawOp::File { path: p.text("path")?.ok_or_else(|| p.err("missing `path`"))? })
        }
        ("source", other) => return Err(err(other, format!("unknown source (known: {})", SOURCES.join(", ")))),
        ("sink", "print") => {
            p.allow(&[])?;
            StepKind::Operator(RawOp::Print)
        }
        ("sink", "blackhole") => {
            p.allow(&[])?;
            StepKind::Operator(RawOp::Blackhole)
        }
        ("sink", "file") => {
            p.allow(&["path", "format"])?;
            let format = match p.text("format")?.as_deref() {
                None | Some("csv") => FileFormat::Csv,
                Some("json") => FileFormat::Json,
                Some(other) => return Err(p.err(&format!("unknown format '{other}' (csv or json)"))),
            };
            StepKind::Operator(RawOp::FileSink { path: p.text("path")?.ok_or_else(|| p.err("missing `path`"))?, format })
        }
        ("sink", other) => return Err(err(other, format!("unknown sink (known: {})", SINKS.join(", ")))),
        ("key_by", _) => {
            let key = shorthand.or(p.text("key")?).ok_or_else(|| p.err("write `key_by: <column>`"))?;
            StepKind::KeyBy(key)
        }
        ("rebalance", _) => StepKind::Rebalance,
        ("split", _) | ("upper", _) | ("lower", _) => {
            p.allow(&["column"])?;
            let column = shorthand.or(p.text("column")?);
            StepKind::Operator(match kind {
                "split" => RawOp::Split { column },
                "upper" => RawOp::Upper { column },
                _ => RawOp::Lower { column },
            })
        }
        ("filter", _) => {
            let expr = shorthand.or(p.text("where")?).ok_or_else(|| p.err("write `filter: \"<column> <op> <value>\"`"))?;
            StepKind::Operator(RawOp::Filter { expr })
        }
        ("select", _) => {
            let columns = match value {
                Value::Sequence(s) => s.iter().filter_map(scalar_text).collect(),
                Value::String(s) => s.split(',').map(|c| c.trim().to_string()).collect(),
                _ => return Err(p.err("write `select: [col, ...]`")),
            };
            StepKind::Operator(RawOp::Select { columns })
        }
        ("throttle", _) => {
            p.allow(&["rows-per-second"])?;
            let rate = match shorthand {
                Some(s) => s.parse::<u64>().map_err(|_| p.err("write `throttle: {rows-per-second: N}`"))?,
                None => match p.int("rows-per-second")? {
                    Some(n) if n >= 0 => n as u64,
                    Some(_) => return Err(p.err("rows-per-second must be at least 1")),
                    None => return Err(p.err("write `throttle: {rows-per-second: N}`")),
                },
            };
            if rate == 0 {
                return Err(p.err("rows-per-second must be at least 1"));
            }
            StepKind::Operator(RawOp::Throttle { rows_per_second: rate })
        }
        ("count", _) | ("sum", _) | ("min", _) | ("max", _) => {
            p.allow(&["field"])?;
            let agg = match kind {
                "count" => AggKind::Count,
                "sum" => AggKind::Sum,
                "min" => AggKind::Min,
                _ => AggKind::Max,
            };
            let field = shorthand.or(p.text("field")?);
            if agg == AggKind::Count && field.is_some() {
                return Err(p.err("count takes no field (it counts rows per key); use `sum: <column>` to add a column up"));
            }
            if agg != AggKind::Count && field.is_none() {
                return Err(p.err(&format!("write `{kind}: <column>` or `{kind}: {{field: <column>}}`")));
            }
            StepKind::Operator(RawOp::Agg { kind: agg, field })
        }
        _ => unreachable!("kinds are checked above"),
    };
    Ok(Step { index, name, kind: step_kind, parallelism, uid })
}

struct Params<'a> {
    map: &'a Mapping,
    step: usize,
    name: &'a str,
    origin: &'a str,
}

impl Params<'_> {
    fn err(&self, reason: &str) -> JobError {
        JobError::Step { origin: self.origin.to_string(), step: self.step, name: self.name.to_string(), reason: reason.to_string() }
    }
    fn allow(&self, known: &[&str]) -> Result<(), JobError> {
        for k in self.map.keys() {
            let k = k.as_str().unwrap_or("?");
            if !known.contains(&k) {
                let expected = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                return Err(self.err(&format!("unknown parameter '{k}' (expected: {expected})")));
            }
        }
        Ok(())
    }
    fn text(&self, key: &str) -> Result<Option<String>, JobError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => scalar_text(v).map(Some).ok_or_else(|| self.err(&format!("`{key}` must be a single value"))),
        }
    }
    fn int(&self, key: &str) -> Result<Option<i64>, JobError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| self.err(&format!("`{key}` must be a whole number"))),
        }
    }
}

fn parse_datagen(p: &Params) -> Result<DatagenSpec, JobError> {
    p.allow(&["fields", "rows-per-second", "number-of-rows", "seed"])?;
    let nonneg = |key: &str| -> Result<Option<u64>, JobError> {
        match p.int(key)? {
            Some(n) if n < 0 => Err(p.err(&format!("`{key}` must not be negative"))),
            other => Ok(other.map(|n| n as u64)),
        }
    };
    let rows_per_second = nonneg("rows-per-second")?.filter(|r| *r > 0);
    let number_of_rows = nonneg("number-of-rows")?;
    let seed = nonneg("seed")?.unwrap_or(0);
    let raw_fields = match p.map.get("fields") {
        None => return Err(p.err("missing `fields` (a list of {name, kind, ...})")),
        Some(Value::Sequence(s)) => s,
        Some(_) => return Err(p.err("`fields` must be a list")),
    };
    let mut fields = Vec::new();
    for (i, f) in raw_fields.iter().enumerate() {
        let m = f.as_mapping().ok_or_else(|| p.err(&format!("field {}: must be a mapping", i + 1)))?;
        let fp = Params { map: m, step: p.step, name: p.name, origin: p.origin };
        let name = fp.text("name")?.ok_or_else(|| p.err(&format!("field {}: missing `name`", i + 1)))?;
        let ferr = |r: &str| p.err(&format!("field '{name}': {r}"));
        let kind = match fp.text("kind")?.as_deref() {
            Some("sequence") => {
                fp.allow(&["name", "kind", "start", "end"]).map_err(|_| ferr("sequence takes start and end"))?;
                let start = fp.int("start")?.unwrap_or(0);
                let end = fp.int("end")?;
                if end.is_some_and(|e| e < start) {
                    return Err(ferr("`end` is before `start`"));
                }
                DatagenKind::Sequence { start, end }
            }
            Some("random") => {
                fp.allow(&["name", "kind", "min", "max", "length"]).map_err(|_| ferr("random takes min and max, or length"))?;
                if let Some(len) = fp.int("length")? {
                    if !(0..=1024).contains(&len) {
                        return Err(ferr("`length` must be between 0 and 1024"));
                    }
                    DatagenKind::RandomString { length: len as usize }
                } else {
                    let min = fp.int("min")?.unwrap_or(0);
                    let max = fp.int("max")?.unwrap_or(i32::MAX as i64);
                    if max < min {
                        return Err(ferr("`max` is below `min`"));
                    }
                    DatagenKind::RandomInt { min, max }
                }
            }
            Some("string") => {
                fp.allow(&["name", "kind", "length"]).map_err(|_| ferr("string takes length"))?;
                let len = fp.int("length")?.unwrap_or(8);
                if !(0..=1024).contains(&len) {
                    return Err(ferr("`length` must be between 0 and 1024"));
                }
                DatagenKind::RandomString { length: len as usize }
            }
            Some(other) => return Err(ferr(&format!("unknown kind '{other}' (sequence, random or string)"))),
            None => return Err(ferr("missing `kind` (sequence, random or string)")),
        };
        fields.push(DatagenField { name, kind });
    }
    if fields.is_empty() {
        return Err(p.err("`fields` is empty"));
    }
    Ok(DatagenSpec { fields, rows_per_second, number_of_rows, seed })
}

/// Resolves an operator's columns against its input schema.
fn resolve(op: &RawOp, input: &Schema, key: Option<String>) -> Result<OperatorSpec, String> {
    let first_text = || {
        input
            .fields()
            .iter()
            .find(|f| f.data_type() == &DataType::Utf8)
            .map(|f| f.name().clone())
            .ok_or_else(|| format!("needs a text column; columns are {}", columns(input)))
    };
    let text_col = |c: &Option<String>| -> Result<String, String> {
        match c {
            None => first_text(),
            Some(c) => match input.field_with_name(c) {
                Ok(f) if f.data_type() == &DataType::Utf8 => Ok(c.clone()),
                Ok(f) => Err(format!("column '{c}' is {}, not text", f.data_type())),
                Err(_) => Err(format!("no column '{c}'; columns are {}", columns(input))),
            },
        }
    };
    let int_col = |c: &str| -> Result<String, String> {
        match input.field_with_name(c) {
            Ok(f) if f.data_type() == &DataType::Int64 => Ok(c.to_string()),
            Ok(f) => Err(format!("column '{c}' is {}, not an integer", f.data_type())),
            Err(_) => Err(format!("no column '{c}'; columns are {}", columns(input))),
        }
    };
    Ok(match op {
        RawOp::Datagen(d) => {
            let mut seen = std::collections::HashSet::new();
            for f in &d.fields {
                if !seen.insert(&f.name) {
                    return Err(format!("field '{}' is defined twice", f.name));
                }
            }
            OperatorSpec::DatagenSource(d.clone())
        }
        RawOp::Socket { host, port } => OperatorSpec::SocketSource { host: host.clone(), port: *port },
        RawOp::File { path } => OperatorSpec::FileSource { path: path.clone() },
        RawOp::Split { column } => OperatorSpec::Split { column: text_col(column)? },
        RawOp::Upper { column } => OperatorSpec::Upper { column: text_col(column)? },
        RawOp::Lower { column } => OperatorSpec::Lower { column: text_col(column)? },
        RawOp::Filter { expr } => {
            let (column, op, value) = parse_filter(expr)?;
            let field = input.field_with_name(&column).map_err(|_| format!("no column '{column}'; columns are {}", columns(input)))?;
            match (field.data_type(), &value, op) {
                (DataType::Utf8, Literal::Text(_), _) => {}
                (DataType::Int64, Literal::Int(_), CompareOp::Contains | CompareOp::StartsWith) => {
                    return Err(format!("'{column}' is an integer: contains/starts_with need text"))
                }
                (DataType::Int64, Literal::Int(_), _) => {}
                (t, _, _) => return Err(format!("column '{column}' is {t}; compare it with a value of that type")),
            }
            OperatorSpec::Filter { column, op, value }
        }
        RawOp::Select { columns: cols } => {
            if cols.is_empty() {
                return Err("select needs at least one column".into());
            }
            for c in cols {
                input.field_with_name(c).map_err(|_| format!("no column '{c}'; columns are {}", columns(input)))?;
            }
            OperatorSpec::Select { columns: cols.clone() }
        }
        RawOp::Throttle { rows_per_second } => OperatorSpec::Throttle { rows_per_second: *rows_per_second },
        RawOp::Agg { kind, field } => {
            let field = match field {
                Some(f) => Some(int_col(f)?),
                None => None,
            };
            OperatorSpec::KeyedAggregate { kind: *kind, key: key.expect("checked by the caller"), field }
        }
        RawOp::Print => OperatorSpec::PrintSink,
        RawOp::FileSink { path, format } => OperatorSpec::FileSink { path: path.clone(), format: *format },
        RawOp::Blackhole => OperatorSpec::BlackholeSink,
    })
}

/// Parses `<column> <op> <literal>`: ops `= == != <> < <= > >= contains starts_with`;
/// literals are integers or quoted text.
pub fn parse_filter(expr: &str) -> Result<(String, CompareOp, Literal), String> {
    let bad = || format!("cannot read filter '{expr}': write `<column> <op> <value>`, e.g. \"word != 'the'\" or \"count > 3\"");
    let expr = expr.trim();
    let col_end = expr.find(|c: char| !(c.is_alphanumeric() || c == '_')).ok_or_else(bad)?;
    let column = expr[..col_end].to_string();
    if column.is_empty() {
        return Err(bad());
    }
    let rest = expr[col_end..].trim_start();
    let ops: &[(&str, CompareOp)] = &[
        ("==", CompareOp::Eq),
        ("!=", CompareOp::Ne),
        ("<>", CompareOp::Ne),
        ("<=", CompareOp::Le),
        (">=", CompareOp::Ge),
        ("=", CompareOp::Eq),
        ("<", CompareOp::Lt),
        (">", CompareOp::Gt),
        ("contains", CompareOp::Contains),
        ("starts_with", CompareOp::StartsWith),
    ];
    let (tok, op) = ops.iter().find(|(t, _)| rest.starts_with(t)).ok_or_else(bad)?;
    let lit = rest[tok.len()..].trim();
    let value = if let Some(s) = lit.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        Literal::Text(s.to_string())
    } else if let Some(s) = lit.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Literal::Text(s.to_string())
    } else {
        Literal::Int(lit.parse().map_err(|_| bad())?)
    };
    Ok((column, *op, value))
}

/// The schema of the rows an operator emits, given its input schema.
pub fn output_schema(spec: &OperatorSpec, input: &SchemaRef) -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, false);
    let int = |n: &str| Field::new(n, DataType::Int64, false);
    match spec {
        OperatorSpec::DatagenSource(d) => Arc::new(Schema::new(
            d.fields
                .iter()
                .map(|f| match f.kind {
                    DatagenKind::RandomString { .. } => text(&f.name),
                    _ => int(&f.name),
                })
                .collect::<Vec<_>>(),
        )),
        OperatorSpec::SocketSource { .. } | OperatorSpec::FileSource { .. } => Arc::new(Schema::new(vec![text("line")])),
        OperatorSpec::Split { .. } => Arc::new(Schema::new(vec![text("word")])),
        OperatorSpec::Upper { .. } | OperatorSpec::Lower { .. } | OperatorSpec::Filter { .. } | OperatorSpec::Throttle { .. } => {
            input.clone()
        }
        OperatorSpec::Select { columns } => {
            let idx: Vec<usize> = columns.iter().map(|c| input.index_of(c).expect("resolved")).collect();
            Arc::new(input.project(&idx).expect("resolved columns"))
        }
        OperatorSpec::KeyedAggregate { kind, key, field } => {
            let key_field = input.field_with_name(key).expect("resolved").clone();
            let value_name = field.clone().unwrap_or_else(|| kind.name().to_string());
            let value_name = if &value_name == key { kind.name().to_string() } else { value_name };
            Arc::new(Schema::new(vec![key_field, int(&value_name)]))
        }
        OperatorSpec::PrintSink | OperatorSpec::FileSink { .. } | OperatorSpec::BlackholeSink => Arc::new(Schema::empty()),
        // Not a job-file step: a DataStream program gives its functions their schemas.
        OperatorSpec::User { .. } | OperatorSpec::Sql { .. } => input.clone(),
    }
}

/// Parses and compiles a job file in one step, with `base` as the cluster's configuration and
/// `overrides` applied last. Returns the effective configuration with the graph.
pub fn compile_job(text: &str, origin: &str, base: &Config, overrides: &Config) -> Result<(JobGraph, Config), JobError> {
    JobFile::parse(text, origin)?.compile_under(base, overrides)
}

impl JobFile {
    /// Compiles under `base` (the cluster's configuration) with this file's `config:` section
    /// and then `overrides` applied. Returns the effective configuration with the graph.
    pub fn compile_under(&self, base: &Config, overrides: &Config) -> Result<(JobGraph, Config), JobError> {
        let mut cfg = base.clone();
        cfg.merge(&self.config);
        cfg.merge(overrides);
        let graph = self.compile(&cfg)?;
        Ok((graph, cfg))
    }

    /// The uids Weir derived (`<step name>-<position>`) for steps the job file gave no `uid`.
    /// State restored from a savepoint is matched to operators by uid, so a derived one no
    /// longer matches once steps are added, removed or reordered before it.
    pub fn derived_uids(&self) -> Vec<String> {
        self.steps.iter().filter(|s| s.uid.is_none()).map(|s| format!("{}-{}", s.name, s.index)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<JobGraph, JobError> {
        compile_job(text, "job.yaml", &Config::new(), &Config::new()).map(|(g, _)| g)
    }

    const WORDCOUNT: &str = r#"
name: wordcount
parallelism: 4
config:
  execution.checkpointing.interval: 10s
pipeline:
  - source: file
    path: /data/input.txt
  - split: {}
  - key_by: word
  - count: {}
  - sink: file
    path: /data/out
"#;

    #[test]
    fn wordcount_compiles_to_two_vertices_with_a_hash_edge() {
        let g = compile(WORDCOUNT).unwrap();
        assert_eq!(g.vertices.len(), 2);
        assert_eq!(g.vertices[0].name, "file -> split");
        assert_eq!(g.vertices[1].name, "count -> file");
        assert_eq!(g.vertices[1].parallelism, 4);
        assert_eq!(g.edges[0].partitioning, Partitioning::Hash { key: "word".into() });
        let schema = g.vertices[1].operators[0].output_schema.clone();
        assert_eq!(schema.field(0).name(), "word");
        assert_eq!(schema.field(1).name(), "count");
        let back = JobGraph::from_json(&g.to_json()).unwrap();
        assert_eq!(back, g);
    }

    #[test]
    fn socket_source_stays_at_parallelism_one_and_rebalances() {
        let g =
            compile("name: s\nparallelism: 4\npipeline:\n  - source: socket\n    port: 9999\n  - upper: {}\n  - sink: print\n").unwrap();
        assert_eq!(g.vertices.len(), 2);
        assert_eq!(g.vertices[0].parallelism, 1);
        assert_eq!(g.vertices[1].parallelism, 4);
        assert_eq!(g.edges[0].partitioning, Partitioning::Rebalance);
    }

    #[test]
    fn job_config_section_is_validated() {
        let err = compile("name: x\nconfig:\n  execution.checkpointing.intreval: 10s\npipeline: []\n").unwrap_err();
        assert!(err.to_string().contains("unknown configuration key 'execution.checkpointing.intreval'"), "{err}");
        let err = compile("name: x\nconfig:\n  security.token: guess\npipeline: []\n").unwrap_err().to_string();
        assert!(err.contains("'security.token', a cluster setting") && !err.contains("guess"), "{err}");
    }

    #[test]
    fn a_long_chain_compiles_to_one_vertex_named_by_its_steps() {
        let mut text = String::from("pipeline:\n  - source: socket\n    host: h\n    port: 1\n");
        text.push_str(&"  - upper: {}\n".repeat(20_000));
        text.push_str("  - sink: blackhole\n");
        let g = compile(&text).unwrap();
        assert_eq!((g.vertices.len(), g.vertices[0].operators.len()), (1, 20_002));
        assert!(g.vertices[0].name.starts_with("socket -> upper -> upper") && g.vertices[0].name.ends_with("upper -> blackhole"));
    }

    #[test]
    fn errors_name_the_step_and_the_problem() {
        let cases = [
            ("pipeline:\n  - source: kafka\n", "step 1 (kafka): unknown source"),
            ("pipeline:\n  - source: file\n    path: x\n  - uper: {}\n", "step 2 (uper): unknown operator"),
            ("pipeline:\n  - source: file\n    path: x\n  - key_by: wrd\n", "no column 'wrd' to key by; columns are line"),
            ("pipeline:\n  - source: file\n    path: x\n  - count: {}\n", "needs a `key_by` step before it"),
            ("pipeline:\n  - source: file\n    path: x\n  - split: {}\n", "must end with a sink"),
            ("pipeline:\n  - split: {}\n", "must start with a source"),
            ("pipeline:\n  - source: file\n", "missing `path`"),
            ("pipeline:\n  - source: file\n    path: x\n    colour: red\n", "unknown parameter 'colour'"),
            ("pipeline: 3\n", "`pipeline` must be a list"),
            ("pipeline:\n  - source: file\n    path: x\n  - filter: \"line >< 3\"\n", "cannot read filter"),
            ("pipeline:\n  - source: file\n    path: x\n  - sink: print\n  - sink: print\n", "nothing may follow a sink"),
            ("name: [\n", "not a valid job file"),
        ];
        for (text, expected) in cases {
            let err = compile(text).unwrap_err().to_string();
            assert!(err.contains(expected), "for {text:?}: expected {expected:?} in {err:?}");
            assert!(err.starts_with("job.yaml"), "{err}");
        }
    }

    #[test]
    fn filters_parse() {
        assert_eq!(parse_filter("count > 3").unwrap(), ("count".into(), CompareOp::Gt, Literal::Int(3)));
        assert_eq!(parse_filter("word != 'the'").unwrap(), ("word".into(), CompareOp::Ne, Literal::Text("the".into())));
        assert!(parse_filter("> 3").is_err());
    }

    #[test]
    fn datagen_bounds_and_per_operator_parallelism() {
        let g = compile(
            r#"
pipeline:
  - source: datagen
    number-of-rows: 1000
    fields:
      - {name: id, kind: sequence, start: 1}
      - {name: key, kind: random, min: 0, max: 9}
    parallelism: 2
  - key_by: key
  - sum: id
    parallelism: 3
  - sink: blackhole
"#,
        )
        .unwrap();
        let OperatorSpec::DatagenSource(d) = &g.vertices[0].operators[0].spec else { panic!() };
        assert_eq!(d.total_rows(), Some(1000));
        assert_eq!(g.vertices[0].parallelism, 2);
        assert_eq!(g.vertices[1].parallelism, 3);
        assert_eq!(g.slots_needed(), 3);
    }
}
