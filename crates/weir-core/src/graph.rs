//! The JobGraph: operators chained into vertices, and the edges between vertices with their
//! partitioning. It is what a job file (and, later, SQL) compiles to, what the JobManager
//! schedules (one subtask per vertex per parallel instance), and what a TaskManager receives
//! (as JSON inside the deploy call) to build the operator chains of its subtasks.

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How rows travel along an edge from the upstream subtasks to the downstream ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// Subtask i to subtask i; chained into one task where possible.
    Forward,
    /// By key: `hash(key) % max_parallelism` picks the key group, the key group the subtask.
    Hash { key: String },
    /// Round robin, one buffer at a time.
    Rebalance,
    /// Every row to every downstream subtask.
    Broadcast,
}

/// One field of the `datagen` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatagenField {
    pub name: String,
    pub kind: DatagenKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatagenKind {
    /// `start`, `start + 1`, ... (row number `n` gives `start + n`).
    Sequence { start: i64, end: Option<i64> },
    /// A pseudo-random integer in `[min, max]`, a pure function of the seed and row number,
    /// so a replay produces the same rows.
    RandomInt { min: i64, max: i64 },
    /// A pseudo-random lowercase string of `length` characters.
    RandomString { length: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatagenSpec {
    pub fields: Vec<DatagenField>,
    pub rows_per_second: Option<u64>,
    pub number_of_rows: Option<u64>,
    pub seed: u64,
}

impl DatagenSpec {
    /// The total number of rows, from `number-of-rows` or a bounded sequence field.
    pub fn total_rows(&self) -> Option<u64> {
        let from_seq = self.fields.iter().find_map(|f| match f.kind {
            DatagenKind::Sequence { start, end: Some(end) } => Some((end - start + 1).max(0) as u64),
            _ => None,
        });
        match (self.number_of_rows, from_seq) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggKind {
    Count,
    Sum,
    Min,
    Max,
}

impl AggKind {
    pub fn name(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Min => "min",
            AggKind::Max => "max",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    StartsWith,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Literal {
    Int(i64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Csv,
    Json,
    /// One line per row of a single text column, written as it is (no quoting): what the
    /// DataStream API's `write_as_text` produces.
    Text,
}

/// What part of a job a user function (DataStream API) plays; the runtime builds it through
/// the user-function registry its TaskManager was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserKind {
    /// A source whose reader the function builds; `max_parallelism` caps it (1 for a source
    /// that cannot be split).
    Source { max_parallelism: Option<u32> },
    /// A stateless batch transform (map, flat_map, filter, formatting).
    Transform,
    /// A transform that keeps keyed state in the job's state backend (reduce); its input
    /// arrives hash-partitioned on the hidden key column `key`.
    Keyed { key: String },
    /// A sink.
    Sink,
}

/// A built-in operator and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorSpec {
    DatagenSource(DatagenSpec),
    SocketSource {
        host: String,
        port: u16,
    },
    FileSource {
        path: String,
    },
    /// One row per whitespace-separated word of `column`, in a column named `word`.
    Split {
        column: String,
    },
    Upper {
        column: String,
    },
    Lower {
        column: String,
    },
    Filter {
        column: String,
        op: CompareOp,
        value: Literal,
    },
    Select {
        columns: Vec<String>,
    },
    /// Passes rows through unchanged, at most `rows_per_second` per subtask: the task takes no
    /// further input until the rows it passed are due (it never sleeps inside the operator, so
    /// barriers and commands are still seen). For building backpressured jobs.
    Throttle {
        rows_per_second: u64,
    },
    /// A keyed running aggregate: emits (key, value) for every input row with the key's
    /// updated value. `field` is None for count.
    KeyedAggregate {
        kind: AggKind,
        key: String,
        field: Option<String>,
    },
    PrintSink,
    FileSink {
        path: String,
        format: FileFormat,
    },
    BlackholeSink,
    /// A function of a DataStream program, resolved by `function` (an id derived from the
    /// operator's uid, so the same program built in another process resolves the same ids).
    User {
        function: String,
        kind: UserKind,
    },
    /// An operator of a SQL job's plan (`weir-sql`): `kind` names it (`calc`, `group-aggregate`,
    /// ...) and `spec` is its definition in that crate's JSON form, which the SQL runtime of the
    /// TaskManager builds. A `keyed` one keeps keyed state and receives its input
    /// hash-partitioned on its key column.
    Sql {
        kind: String,
        keyed: bool,
        spec: serde_json::Value,
    },
}

impl OperatorSpec {
    pub fn is_source(&self) -> bool {
        matches!(
            self,
            Self::DatagenSource(_) | Self::SocketSource { .. } | Self::FileSource { .. } | Self::User { kind: UserKind::Source { .. }, .. }
        )
    }

    /// Whether a source's checkpointed position can be restored at another parallelism. The
    /// file source's is a list of splits, one state element each, that the runtime deals over
    /// the new subtasks; datagen's sequences are cut per subtask, and the socket source keeps
    /// no position (and runs at parallelism 1).
    pub fn source_rescalable(&self) -> bool {
        matches!(self, Self::FileSource { .. })
    }

    pub fn is_sink(&self) -> bool {
        matches!(self, Self::PrintSink | Self::FileSink { .. } | Self::BlackholeSink | Self::User { kind: UserKind::Sink, .. })
    }

    /// Whether the operator keeps keyed state (and so needs a stable uid).
    pub fn is_stateful(&self) -> bool {
        matches!(self, Self::KeyedAggregate { .. } | Self::User { kind: UserKind::Keyed { .. }, .. } | Self::Sql { keyed: true, .. })
    }

    /// Sources that cannot run in parallel (the socket source reads one connection).
    pub fn max_parallelism(&self) -> Option<u32> {
        match self {
            Self::SocketSource { .. } => Some(1),
            Self::User { kind: UserKind::Source { max_parallelism }, .. } => *max_parallelism,
            _ => None,
        }
    }
}

/// An operator inside a vertex's chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainedOperator {
    /// Display name (`datagen`, `count`, ...).
    pub name: String,
    /// Stable id that maps its state back after a change of parallelism or of the job.
    pub uid: String,
    pub spec: OperatorSpec,
    /// Schema of the rows this operator emits (empty for sinks).
    #[serde(with = "schema_serde")]
    pub output_schema: SchemaRef,
}

/// A vertex: a chain of operators that run as one task per parallel instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vertex {
    pub id: u32,
    pub name: String,
    pub parallelism: u32,
    pub operators: Vec<ChainedOperator>,
}

impl Vertex {
    /// Schema of the rows that leave this vertex.
    pub fn output_schema(&self) -> SchemaRef {
        self.operators.last().map(|o| o.output_schema.clone()).unwrap_or_else(|| Arc::new(Schema::empty()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub id: u32,
    pub source: u32,
    pub target: u32,
    pub partitioning: Partitioning,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobGraph {
    pub name: String,
    pub max_parallelism: u32,
    pub vertices: Vec<Vertex>,
    pub edges: Vec<Edge>,
}

impl JobGraph {
    pub fn vertex(&self, id: u32) -> &Vertex {
        &self.vertices[id as usize]
    }

    pub fn inputs_of(&self, vertex: u32) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.target == vertex)
    }

    pub fn outputs_of(&self, vertex: u32) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.source == vertex)
    }

    /// Slots the job needs with slot sharing: one slot holds one subtask of every vertex.
    pub fn slots_needed(&self) -> u32 {
        self.vertices.iter().map(|v| v.parallelism).max().unwrap_or(0)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a JobGraph always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Arrow schemas ship as a list of (name, type, nullable); a type is arrow's own text form
/// (`Timestamp(ms)`, `Decimal128(10, 2)`, ...), with short names for the common three.
mod schema_serde {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    struct F {
        name: String,
        ty: String,
        /// Absent (false) in the graphs of job files and programs, whose columns are never null
        /// but for the hidden timestamp; SQL columns are nullable.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        nullable: bool,
    }

    pub fn serialize<S: Serializer>(schema: &SchemaRef, s: S) -> Result<S::Ok, S::Error> {
        let fields: Vec<F> = schema
            .fields()
            .iter()
            .map(|f| F {
                name: f.name().clone(),
                ty: match f.data_type() {
                    DataType::Int64 => "int64".into(),
                    DataType::Utf8 => "utf8".into(),
                    DataType::Binary => "binary".into(),
                    other => format!("{other}"),
                },
                nullable: f.is_nullable(),
            })
            .collect();
        fields.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SchemaRef, D::Error> {
        let fields = Vec::<F>::deserialize(d)?;
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            let ty = match f.ty.as_str() {
                "int64" => DataType::Int64,
                "utf8" => DataType::Utf8,
                "binary" => DataType::Binary,
                other => {
                    other.parse::<DataType>().map_err(|e| serde::de::Error::custom(format!("unsupported column type {other}: {e}")))?
                }
            };
            out.push(Field::new(f.name, ty, f.nullable));
        }
        Ok(Arc::new(Schema::new(out)))
    }
}
