//! A program's operators as the API builds them, and their translation into a JobGraph.
//!
//! Each call on a stream appends one [`Node`]; a node knows its input, the partitioning of the
//! edge from it, its parallelism, uid and name. [`Program::build`] then chains nodes into
//! vertices as a job file's steps are chained: a node joins its input's vertex when the edge is
//! forward, the parallelism is the same and the input feeds nothing else; otherwise it starts a
//! vertex (a forward edge between different parallelisms becomes a rebalance, as in Flink).
//!
//! A node's uid is the one the program set, or `<kind>-<position>`; a user function's id is its
//! operator's uid, so building the same program again gives the same ids.

use crate::functions::{Factory, ProgramFunctions};
use crate::ApiError;
use arrow_schema::SchemaRef;
use std::collections::HashSet;
use weir_core::graph::{ChainedOperator, Edge, JobGraph, OperatorSpec, Partitioning, UserKind, Vertex};
use weir_core::settings::JobSettings;

/// What a node runs.
pub(crate) enum NodeSpec {
    /// A built-in operator (sources, sinks).
    Builtin(OperatorSpec),
    /// A function of this program.
    User { kind: UserKind, factory: Factory },
}

pub(crate) struct Node {
    /// Short name of what it is (`map`, `reduce`): the default name, and the default uid's stem.
    pub kind: &'static str,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub parallelism: Option<u32>,
    pub input: Option<usize>,
    /// The edge from `input`.
    pub partitioning: Partitioning,
    pub spec: NodeSpec,
    pub output_schema: SchemaRef,
}

/// The operators of a program, in the order it created them (inputs before their consumers).
#[derive(Default)]
pub(crate) struct Program {
    pub nodes: Vec<Node>,
    /// `pipeline.auto-watermark-interval` in milliseconds, set by [`Program::build`] from the
    /// job's settings and read by the watermark assigners' factories when subtasks are built
    /// (after the build, in this process or in an application TaskManager that built the same
    /// program with the same settings).
    pub watermark_interval_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Program {
    pub fn add(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn uid(&self, i: usize) -> String {
        let n = &self.nodes[i];
        n.uid.clone().unwrap_or_else(|| format!("{}-{i}", n.kind))
    }

    /// The JobGraph of the program, and its functions by id, under `settings` (the default
    /// parallelism and the number of key groups).
    pub fn build(&self, job_name: &str, settings: &JobSettings) -> Result<(JobGraph, ProgramFunctions), ApiError> {
        let interval = settings.auto_watermark_interval.as_millis().min(u64::MAX as u128) as u64;
        self.watermark_interval_ms.store(interval, std::sync::atomic::Ordering::Relaxed);
        if self.nodes.is_empty() {
            return Err(ApiError::Program("the program defines no operators: add a source and a sink before execute".into()));
        }
        let mut uids = HashSet::new();
        let mut functions = ProgramFunctions::default();
        let mut parallelism = Vec::with_capacity(self.nodes.len());
        let mut consumers = vec![0usize; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            let uid = self.uid(i);
            if !uids.insert(uid.clone()) {
                return Err(ApiError::Program(format!("two operators have the uid '{uid}': uids must be unique in a program")));
            }
            if let Some(input) = n.input {
                consumers[input] += 1;
            }
            let cap = match &n.spec {
                NodeSpec::Builtin(spec) => spec.max_parallelism(),
                NodeSpec::User { kind: UserKind::Source { max_parallelism }, .. } => *max_parallelism,
                NodeSpec::User { .. } => None,
            };
            let p = match (n.parallelism, cap) {
                (Some(p), Some(cap)) if p > cap => {
                    return Err(ApiError::Program(format!("operator '{uid}' runs at parallelism {cap} at most, not {p}")))
                }
                (Some(p), _) => p,
                (None, Some(cap)) => settings.parallelism.min(cap),
                (None, None) => settings.parallelism,
            };
            if p == 0 || p > settings.max_parallelism {
                return Err(ApiError::Program(format!(
                    "operator '{uid}' has parallelism {p}: it must be between 1 and pipeline.max-parallelism ({})",
                    settings.max_parallelism
                )));
            }
            parallelism.push(p);
            if let NodeSpec::User { factory, .. } = &n.spec {
                functions.insert(uid, factory.clone());
            }
        }

        let mut vertices: Vec<Vertex> = Vec::new();
        let mut edges: Vec<Edge> = Vec::new();
        let mut vertex_of = vec![0u32; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            let uid = self.uid(i);
            let spec = match &n.spec {
                NodeSpec::Builtin(spec) => spec.clone(),
                NodeSpec::User { kind, .. } => OperatorSpec::User { function: uid.clone(), kind: kind.clone() },
            };
            let op = ChainedOperator {
                name: n.name.clone().unwrap_or_else(|| n.kind.to_string()),
                uid,
                spec,
                output_schema: n.output_schema.clone(),
            };
            let chains = n.input.is_some_and(|input| {
                n.partitioning == Partitioning::Forward && parallelism[input] == parallelism[i] && consumers[input] == 1
            });
            match n.input {
                Some(input) if chains => {
                    let v = vertex_of[input];
                    let vertex = &mut vertices[v as usize];
                    vertex.name = format!("{} -> {}", vertex.name, op.name);
                    vertex.operators.push(op);
                    vertex_of[i] = v;
                }
                input => {
                    let id = vertices.len() as u32;
                    if let Some(input) = input {
                        let partitioning = match &n.partitioning {
                            Partitioning::Forward if parallelism[input] != parallelism[i] => Partitioning::Rebalance,
                            p => p.clone(),
                        };
                        edges.push(Edge { id: edges.len() as u32, source: vertex_of[input], target: id, partitioning });
                    }
                    vertices.push(Vertex { id, name: op.name.clone(), parallelism: parallelism[i], operators: vec![op] });
                    vertex_of[i] = id;
                }
            }
        }
        let graph = JobGraph { name: job_name.to_string(), max_parallelism: settings.max_parallelism, vertices, edges };
        Ok((graph, functions))
    }
}

#[cfg(test)]
mod tests {
    use crate::prelude::*;
    use weir_core::graph::{OperatorSpec, Partitioning, UserKind};

    fn settings(env: &StreamExecutionEnvironment) -> weir_core::settings::JobSettings {
        env.all_settings().to_config().unwrap().1
    }

    /// Operators chain while the edge is forward at one parallelism; `key_by` hashes on the
    /// hidden key column, a change of parallelism rebalances, and function ids are the uids.
    #[test]
    fn operators_chain_into_vertices_as_job_file_steps_do() {
        let mut env = StreamExecutionEnvironment::get_execution_environment();
        env.set_parallelism(2);
        env.from_iter(vec!["a b".to_string()])
            .flat_map(|l: String, out: &mut Vec<String>| out.extend(l.split(' ').map(str::to_string)))
            .key_by(|w: &String| w.clone())
            .reduce(|a: String, _b: String| a)
            .uid("words")
            .print();
        let (graph, functions) = env.program.borrow().build("t", &settings(&env)).unwrap();
        let names: Vec<Vec<&str>> = graph.vertices.iter().map(|v| v.operators.iter().map(|o| o.name.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["from_iter"], vec!["flat_map", "key_by"], vec!["reduce", "to_text", "print"]]);
        assert_eq!(graph.vertices.iter().map(|v| v.parallelism).collect::<Vec<_>>(), vec![1, 2, 2]);
        assert_eq!(graph.edges[0].partitioning, Partitioning::Rebalance);
        assert_eq!(graph.edges[1].partitioning, Partitioning::Hash { key: "key".into() });
        let reduce = &graph.vertices[2].operators[0];
        assert_eq!(reduce.spec, OperatorSpec::User { function: "words".into(), kind: UserKind::Keyed { key: "key".into() } });
        assert_eq!(functions.ids().collect::<Vec<_>>(), vec!["flat_map-1", "from_iter-0", "key_by-2", "to_text-4", "words"]);
        // The graph travels as JSON, binary columns included.
        assert_eq!(weir_core::graph::JobGraph::from_json(&graph.to_json()).unwrap(), graph);
    }

    #[test]
    fn a_duplicate_uid_is_refused_naming_it() {
        let env = StreamExecutionEnvironment::get_execution_environment();
        env.from_iter(vec![1i64]).map(|x: i64| x).uid("same").map(|x: i64| x).uid("same").blackhole();
        let err = env.program.borrow().build("t", &settings(&env)).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("'same'"), "{err}");
    }
}
