//! Channel wiring: which channels one subtask reads and writes, worked out from the JobGraph
//! alone, so that the sending and the receiving TaskManager agree on every channel without
//! talking to each other. The TaskManager performs a [`ChannelPlan`] (local queues or the TCP
//! data plane, depending on where each peer subtask runs); the rules live here, free of
//! sockets, and are unit-tested.
//!
//! ## Rules
//! - A subtask's input gate has one channel per upstream subtask of each input edge: the
//!   input edges in edge order, and within an edge the upstream subtasks in index order. So
//!   an edge's channels start at the sum of the upstream parallelisms of the edges before it.
//! - Upstream subtask `j` of an edge writes into gate channel `offset(edge) + j` of every
//!   downstream subtask it sends to: all of them for `hash`, `rebalance` and `broadcast`
//!   edges, subtask `j` only for `forward` edges.
//! - A channel is named on the wire by (job, attempt, edge, upstream subtask, downstream
//!   subtask): see [`Channel::id`]. The attempt is part of the name, so the channels of a
//!   restarted job never mix with those of the attempt that failed.
//!
//! ## Known limitation: forward edges between vertices
//! A gate gets one channel per upstream subtask on every input edge, forward edges included,
//! but on a forward edge only upstream subtask `i` writes to downstream subtask `i`. The gate's
//! other channels of that edge never deliver anything, not even an end of partition, so the
//! gate would never finish and an aligned barrier would never complete. The job compiler does
//! not produce forward edges between vertices today (operators at equal parallelism are
//! chained into one vertex); a graph that has one would hang.

use crate::buffer::ChannelId;
use arrow_schema::{Schema, SchemaRef};
use std::sync::Arc;
use weir_core::graph::{Edge, JobGraph, Partitioning};

/// Why a subtask's channels cannot be planned: the job graph does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WiringError {
    /// The subtask to plan names a vertex the graph does not have.
    #[error("the job graph has no vertex {vertex}")]
    NoVertex { vertex: u32 },
    /// An edge's source or target is not a vertex of the graph.
    #[error("edge {edge} leads to vertex {vertex}, which the job graph does not have")]
    EdgeToNoVertex { edge: u32, vertex: u32 },
    /// The subtask index is not below the vertex's parallelism.
    #[error("vertex {vertex} has no subtask {subtask} (parallelism {parallelism})")]
    NoSubtask { vertex: u32, subtask: u32, parallelism: u32 },
    /// A hash edge's key is not a column of its upstream vertex's output.
    #[error("edge {edge} is hash-partitioned by '{key}', which is not an output column of vertex {vertex}")]
    NoKeyColumn { edge: u32, vertex: u32, key: String },
}

/// One subtask of the job graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubtaskRef {
    /// The vertex id, which is also its position in `JobGraph::vertices` (it is looked up by
    /// position).
    pub vertex: u32,
    /// The subtask index, from 0 to the vertex's parallelism (exclusive).
    pub subtask: u32,
}

/// One channel: upstream subtask `from` writes it on edge `edge`, downstream subtask `to`
/// reads it as channel `gate_index` of its input gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    /// The JobGraph edge id.
    pub edge: u32,
    /// The writing (upstream) subtask.
    pub from: SubtaskRef,
    /// The reading (downstream) subtask.
    pub to: SubtaskRef,
    /// The channel's index in `to`'s input gate: the offset of `edge` among `to`'s input edges,
    /// plus `from.subtask`.
    pub gate_index: usize,
}

impl Channel {
    /// The channel's name on the wire, for one attempt of one job. Both ends compute it from
    /// their own plan; it names the channel in every frame and in the network's registrations.
    pub fn id(&self, job: u128, attempt: u32) -> ChannelId {
        ChannelId { job, attempt, edge: self.edge, from: self.from.subtask, to: self.to.subtask }
    }
}

/// One output edge of a subtask: how it partitions its rows over its channels.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputEdgePlan {
    /// The JobGraph edge id.
    pub edge: u32,
    /// As in the job graph. A `forward` edge has one channel, to the subtask with the same index.
    pub partitioning: Partitioning,
    /// For hash edges: the key's column in the subtask's output rows.
    pub key_column: Option<usize>,
    /// In the order the partitioning numbers them (channel `i` goes to the `i`-th target).
    pub channels: Vec<Channel>,
}

/// Every channel of one subtask.
#[derive(Debug, Clone)]
pub struct ChannelPlan {
    /// The subtask planned.
    pub subtask: SubtaskRef,
    /// The schema of the rows on the input channels (empty for a source vertex): the output
    /// schema of the first input edge's source vertex. Edges are not checked to agree.
    pub input_schema: SchemaRef,
    /// The input gate's channels in gate order (`inputs[i].gate_index == i`); empty for a
    /// source vertex, which has no gate.
    pub inputs: Vec<Channel>,
    /// One per output edge, in edge order; empty for a sink vertex.
    pub outputs: Vec<OutputEdgePlan>,
}

impl ChannelPlan {
    /// The channels of subtask `subtask` of vertex `vertex`. Reads the graph only, so the
    /// TaskManagers at both ends of a channel compute the same channel independently. Errors
    /// name the missing vertex, subtask or key column.
    pub fn for_subtask(graph: &JobGraph, vertex: u32, subtask: u32) -> Result<Self, WiringError> {
        let me = SubtaskRef { vertex, subtask };
        let v = graph.vertices.get(vertex as usize).ok_or(WiringError::NoVertex { vertex })?;
        if subtask >= v.parallelism {
            return Err(WiringError::NoSubtask { vertex, subtask, parallelism: v.parallelism });
        }

        let mut inputs = Vec::new();
        let mut input_schema = None;
        for e in graph.inputs_of(vertex) {
            let up = parallelism(graph, e, e.source)?;
            input_schema.get_or_insert_with(|| graph.vertices[e.source as usize].output_schema());
            for j in 0..up {
                let gate_index = inputs.len();
                inputs.push(Channel { edge: e.id, from: SubtaskRef { vertex: e.source, subtask: j }, to: me, gate_index });
            }
        }

        let mut outputs = Vec::new();
        for e in graph.outputs_of(vertex) {
            let down = parallelism(graph, e, e.target)?;
            let offset = gate_offset(graph, e)?;
            let targets: Vec<u32> = match e.partitioning {
                Partitioning::Forward => vec![subtask],
                _ => (0..down).collect(),
            };
            let channels = targets
                .into_iter()
                .map(|k| Channel {
                    edge: e.id,
                    from: me,
                    to: SubtaskRef { vertex: e.target, subtask: k },
                    gate_index: offset + subtask as usize,
                })
                .collect();
            let key_column = match &e.partitioning {
                Partitioning::Hash { key } => {
                    Some(v.output_schema().index_of(key).map_err(|_| WiringError::NoKeyColumn { edge: e.id, vertex, key: key.clone() })?)
                }
                _ => None,
            };
            outputs.push(OutputEdgePlan { edge: e.id, partitioning: e.partitioning.clone(), key_column, channels });
        }

        Ok(ChannelPlan { subtask: me, input_schema: input_schema.unwrap_or_else(|| Arc::new(Schema::empty())), inputs, outputs })
    }
}

/// The parallelism of `vertex`, an end of edge `e`.
fn parallelism(graph: &JobGraph, e: &Edge, vertex: u32) -> Result<u32, WiringError> {
    graph.vertices.get(vertex as usize).map(|v| v.parallelism).ok_or(WiringError::EdgeToNoVertex { edge: e.id, vertex })
}

/// Where edge `e`'s channels start in its target's input gate: after those of the target's
/// earlier input edges.
fn gate_offset(graph: &JobGraph, e: &Edge) -> Result<usize, WiringError> {
    let mut offset = 0;
    for earlier in graph.inputs_of(e.target).take_while(|x| x.id != e.id) {
        offset += parallelism(graph, earlier, earlier.source)? as usize;
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field};
    use weir_core::graph::{ChainedOperator, OperatorSpec, Vertex};

    fn vertex(id: u32, parallelism: u32, columns: &[&str]) -> Vertex {
        let schema = Arc::new(Schema::new(columns.iter().map(|c| Field::new(*c, DataType::Int64, false)).collect::<Vec<_>>()));
        let op = ChainedOperator {
            name: format!("v{id}"),
            uid: format!("v{id}"),
            spec: OperatorSpec::Select { columns: columns.iter().map(|c| c.to_string()).collect() },
            output_schema: schema,
        };
        Vertex { id, name: format!("v{id}"), parallelism, operators: vec![op] }
    }

    fn edge(id: u32, source: u32, target: u32, partitioning: Partitioning) -> Edge {
        Edge { id, source, target, partitioning }
    }

    /// v0 (p=2) and v1 (p=3) both feed v2 (p=2): a hash edge and a rebalance edge into one
    /// gate; v2 broadcasts to v3 (p=2).
    fn two_inputs() -> JobGraph {
        JobGraph {
            name: "t".into(),
            max_parallelism: 128,
            vertices: vec![vertex(0, 2, &["k"]), vertex(1, 3, &["k"]), vertex(2, 2, &["k", "n"]), vertex(3, 2, &[])],
            edges: vec![
                edge(0, 0, 2, Partitioning::Hash { key: "k".into() }),
                edge(1, 1, 2, Partitioning::Rebalance),
                edge(2, 2, 3, Partitioning::Broadcast),
            ],
        }
    }

    fn at(vertex: u32, subtask: u32) -> SubtaskRef {
        SubtaskRef { vertex, subtask }
    }

    #[test]
    fn a_gate_numbers_its_channels_by_input_edge_then_upstream_subtask() {
        let plan = ChannelPlan::for_subtask(&two_inputs(), 2, 1).unwrap();
        let froms: Vec<(u32, SubtaskRef)> = plan.inputs.iter().map(|c| (c.edge, c.from)).collect();
        assert_eq!(froms, vec![(0, at(0, 0)), (0, at(0, 1)), (1, at(1, 0)), (1, at(1, 1)), (1, at(1, 2))]);
        assert!(plan.inputs.iter().enumerate().all(|(i, c)| c.gate_index == i && c.to == at(2, 1)));
        assert_eq!(plan.input_schema.fields().len(), 1);
        assert_eq!(plan.inputs[3].id(7, 2), ChannelId { job: 7, attempt: 2, edge: 1, from: 1, to: 1 });
    }

    #[test]
    fn a_later_input_edge_writes_after_the_channels_of_the_earlier_ones() {
        let plan = ChannelPlan::for_subtask(&two_inputs(), 1, 2).unwrap();
        assert!(plan.inputs.is_empty(), "a source vertex has no gate");
        let [out] = plan.outputs.as_slice() else { panic!("one output edge") };
        assert_eq!((out.edge, out.key_column), (1, None));
        let to: Vec<(SubtaskRef, usize)> = out.channels.iter().map(|c| (c.to, c.gate_index)).collect();
        assert_eq!(to, vec![(at(2, 0), 4), (at(2, 1), 4)], "edge 1 starts after edge 0's two channels");
    }

    #[test]
    fn hash_edges_resolve_their_key_column_and_name_a_missing_one() {
        let mut graph = two_inputs();
        let plan = ChannelPlan::for_subtask(&graph, 0, 0).unwrap();
        assert_eq!(plan.outputs[0].key_column, Some(0));
        graph.edges[0].partitioning = Partitioning::Hash { key: "nope".into() };
        let err = ChannelPlan::for_subtask(&graph, 0, 0).unwrap_err();
        assert_eq!(err, WiringError::NoKeyColumn { edge: 0, vertex: 0, key: "nope".into() });
        assert!(err.to_string().contains("'nope'"));
    }

    #[test]
    fn forward_edges_connect_equal_indices_only() {
        let graph = JobGraph {
            name: "f".into(),
            max_parallelism: 128,
            vertices: vec![vertex(0, 3, &["k"]), vertex(1, 3, &[])],
            edges: vec![edge(0, 0, 1, Partitioning::Forward)],
        };
        let plan = ChannelPlan::for_subtask(&graph, 0, 1).unwrap();
        let to: Vec<(SubtaskRef, usize)> = plan.outputs[0].channels.iter().map(|c| (c.to, c.gate_index)).collect();
        assert_eq!(to, vec![(at(1, 1), 1)]);
    }

    #[test]
    fn a_broken_graph_is_an_error_naming_what_is_missing() {
        let mut graph = two_inputs();
        assert_eq!(ChannelPlan::for_subtask(&graph, 9, 0).unwrap_err(), WiringError::NoVertex { vertex: 9 });
        assert_eq!(ChannelPlan::for_subtask(&graph, 2, 2).unwrap_err(), WiringError::NoSubtask { vertex: 2, subtask: 2, parallelism: 2 });
        graph.edges.push(edge(3, 5, 2, Partitioning::Rebalance));
        assert_eq!(ChannelPlan::for_subtask(&graph, 2, 0).unwrap_err(), WiringError::EdgeToNoVertex { edge: 3, vertex: 5 });
    }

    /// Sender and receiver agree: every channel a subtask writes is, at the same gate index,
    /// a channel its target reads from it on that edge, and every channel a gate reads that
    /// carries data is written by its upstream subtask.
    #[test]
    fn senders_and_receivers_agree_on_every_channel() {
        let graph = two_inputs();
        let plans: Vec<ChannelPlan> = graph
            .vertices
            .iter()
            .flat_map(|v| (0..v.parallelism).map(move |s| (v.id, s)))
            .map(|(v, s)| ChannelPlan::for_subtask(&graph, v, s).unwrap())
            .collect();
        let plan_of = |r: SubtaskRef| plans.iter().find(|p| p.subtask == r).expect("planned");
        let mut written = 0;
        for p in &plans {
            for c in p.outputs.iter().flat_map(|o| &o.channels) {
                assert_eq!(plan_of(c.to).inputs.get(c.gate_index), Some(c), "{c:?}");
                written += 1;
            }
        }
        let read: usize = plans.iter().map(|p| p.inputs.len()).sum();
        assert_eq!(written, read, "no edge here is forward, so every gate channel has a writer");
    }
}
