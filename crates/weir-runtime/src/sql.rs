//! The hook through which a task builds the operators of SQL plans
//! ([`OperatorSpec::Sql`](weir_core::graph::OperatorSpec::Sql)).
//!
//! A SQL job's projections, filters and aggregates are DataFusion expressions evaluated over
//! Arrow batches. The code that plans and evaluates them lives in `weir-sql`, which depends on
//! this crate (its operators are [`ChainOperator`]s), so the runtime cannot call it directly:
//! the TaskManager hands the runtime a [`SqlOperators`] factory, as it hands it the
//! connectors. Tasks built without one ([`NoSqlOperators`], the runtime's own tests) fail a SQL
//! operator with an error that names it.

use crate::operators::ChainOperator;
use arrow_schema::SchemaRef;
use weir_core::graph::ChainedOperator;
use weir_core::operator::{OpResult, OperatorError, SubtaskInfo};
use weir_state::StateBackend;

/// Builds the operators of SQL plans.
pub trait SqlOperators: Send + Sync {
    /// Builds SQL operator `op` for subtask `info`; `input` is the schema of the rows it
    /// receives. `state` creates the subtask's empty keyed state backend, for a keyed operator
    /// only (the task restores it from a checkpoint afterwards).
    fn build(
        &self,
        op: &ChainedOperator,
        input: &SchemaRef,
        info: &SubtaskInfo,
        state: &mut dyn FnMut() -> OpResult<StateBackend>,
    ) -> OpResult<ChainOperator>;
}

/// The factory of a task that runs no SQL.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSqlOperators;

impl SqlOperators for NoSqlOperators {
    fn build(
        &self,
        op: &ChainedOperator,
        _input: &SchemaRef,
        _info: &SubtaskInfo,
        _state: &mut dyn FnMut() -> OpResult<StateBackend>,
    ) -> OpResult<ChainOperator> {
        Err(OperatorError::Failed(format!(
            "operator '{}' (uid {}) belongs to a SQL plan, and this TaskManager was started without the SQL runtime",
            op.name, op.uid
        )))
    }
}
