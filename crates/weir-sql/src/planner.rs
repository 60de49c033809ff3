//! DataFusion as Weir's SQL front end: the function registry and catalog view DataFusion's
//! SQL-to-logical-plan translator (`SqlToRel`) needs, type coercion, and the shipping of
//! expressions from the planner to the TaskManagers.
//!
//! ## How an expression travels
//! The planner (in the client and the JobManager) turns a query into DataFusion's logical plan.
//! Each projection, filter or aggregate argument is an `Expr` over the columns of its input.
//! A JobGraph travels as JSON, and DataFusion's own serialization (`datafusion-proto`) needs
//! DataFusion's whole execution engine, so an expression ships as SQL text instead:
//! its column references are rewritten to positional names (`c0`, `c1`, ... for the input's
//! columns in order, so qualifiers and duplicate names cannot be confused), and DataFusion's
//! unparser writes it out. The TaskManager parses that text against the same positional input
//! schema, plans it with the same functions and coercion rules, and gets DataFusion's
//! physical expression, which evaluates a whole Arrow batch at once.
//!
//! The planner checks every expression it ships by doing the TaskManager's half itself
//! ([`ShippedExpr::ship`] plans the text back and compares the type), so a text that would not
//! plan the same on a TaskManager fails the submission, naming the expression, not the job.

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion_common::config::ConfigOptions;
use datafusion_common::tree_node::{Transformed, TreeNode};
use datafusion_common::{Column, DFSchema, DataFusionError, Result as DfResult, TableReference};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::logical_plan::builder::LogicalTableSource;
use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion_expr::planner::{ContextProvider, ExprPlanner};
use datafusion_expr::{AggregateUDF, Expr, ExprSchemable, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};
use datafusion_optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion_physical_expr::PhysicalExpr;
use datafusion_sql::planner::{ParserOptions, PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::Parser;
use datafusion_sql::unparser::Unparser;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// The scalar and aggregate functions SQL can call, by lower-case name (aliases included), and
/// DataFusion's expression planners for the syntax that becomes function calls (`||`,
/// `SUBSTRING(... FROM ...)`, `EXTRACT`, `POSITION`, ...).
pub struct Functions {
    scalars: HashMap<String, Arc<ScalarUDF>>,
    aggregates: HashMap<String, Arc<AggregateUDF>>,
    planners: Vec<Arc<dyn ExprPlanner>>,
    options: ConfigOptions,
}

impl Functions {
    /// The registry, built once per process.
    pub fn get() -> &'static Functions {
        static FUNCTIONS: OnceLock<Functions> = OnceLock::new();
        FUNCTIONS.get_or_init(|| {
            let mut scalars = HashMap::new();
            // Functions about the file a row was read from need DataFusion's file scans.
            let scan_only = ["input_file_name", "file_row_index"];
            for f in datafusion_functions::all_default_functions().into_iter().filter(|f| !scan_only.contains(&f.name())) {
                for name in std::iter::once(f.name()).chain(f.aliases().iter().map(String::as_str)) {
                    scalars.insert(name.to_ascii_lowercase(), f.clone());
                }
            }
            let proctime = Arc::new(ScalarUDF::from(Proctime::new()));
            scalars.insert("proctime".to_string(), proctime);
            let mut aggregates = HashMap::new();
            for f in datafusion_functions_aggregate::all_default_aggregate_functions() {
                for name in std::iter::once(f.name()).chain(f.aliases().iter().map(String::as_str)) {
                    aggregates.insert(name.to_ascii_lowercase(), f.clone());
                }
            }
            let planners: Vec<Arc<dyn ExprPlanner>> = vec![
                Arc::new(datafusion_functions::core::planner::CoreFunctionPlanner::default()),
                Arc::new(datafusion_functions::unicode::planner::UnicodeFunctionPlanner),
                Arc::new(datafusion_functions::datetime::planner::DatetimeFunctionPlanner),
            ];
            Functions { scalars, aggregates, planners, options: ConfigOptions::default() }
        })
    }
}

/// `PROCTIME()`: the wall-clock time at which a batch is processed, as a TIMESTAMP(3), for
/// processing-time windows. (DataFusion's `now()` is the time the query was planned, the same
/// for every row.)
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Proctime {
    signature: datafusion_expr::Signature,
}

impl Proctime {
    fn new() -> Self {
        Self { signature: datafusion_expr::Signature::exact(vec![], datafusion_expr::Volatility::Volatile) }
    }
}

impl datafusion_expr::ScalarUDFImpl for Proctime {
    fn name(&self) -> &str {
        "proctime"
    }

    fn signature(&self) -> &datafusion_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, None))
    }

    fn invoke_with_args(&self, _args: datafusion_expr::ScalarFunctionArgs) -> DfResult<datafusion_expr::ColumnarValue> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        Ok(datafusion_expr::ColumnarValue::Scalar(datafusion_common::ScalarValue::TimestampMillisecond(Some(now), None)))
    }
}

/// Parser options of Flink's dialect: identifiers are case-sensitive as written (Flink does not
/// fold unquoted names), while function names are looked up in any case.
pub fn parser_options() -> ParserOptions {
    ParserOptions {
        enable_ident_normalization: false,
        // Weir's operators and connectors work on Utf8 columns.
        map_string_types_to_utf8view: false,
        // Spans let planning errors point at the column or function they are about.
        collect_spans: true,
        ..ParserOptions::default()
    }
}

/// What the SQL planner sees: the functions, and the tables of a catalog by name.
pub struct Provider<'a> {
    pub functions: &'static Functions,
    /// Table (and view) name → its columns.
    pub tables: &'a HashMap<String, SchemaRef>,
}

impl ContextProvider for Provider<'_> {
    fn get_table_source(&self, name: TableReference) -> DfResult<Arc<dyn TableSource>> {
        let table = name.table();
        match self.tables.get(table) {
            Some(schema) => Ok(Arc::new(LogicalTableSource::new(schema.clone()))),
            None => {
                let mut known: Vec<&String> = self.tables.keys().collect();
                known.sort();
                let known = if known.is_empty() {
                    "none is defined yet".to_string()
                } else {
                    known.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")
                };
                Err(DataFusionError::Plan(format!("unknown table '{table}' (tables and views: {known})")))
            }
        }
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.functions.scalars.get(&name.to_ascii_lowercase()).cloned()
    }

    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.functions.aggregates.get(&name.to_ascii_lowercase()).cloned()
    }

    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.functions.planners
    }

    fn options(&self) -> &ConfigOptions {
        &self.functions.options
    }

    fn udf_names(&self) -> Vec<String> {
        self.functions.scalars.keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.functions.aggregates.keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// `expr` with DataFusion's implicit casts made explicit (an `INT` compared with a `BIGINT`,
/// a string literal compared with a timestamp, ...), as the analyzer does for whole plans.
pub fn coerce(expr: Expr, schema: &DFSchema) -> DfResult<Expr> {
    let mut rewriter = TypeCoercionRewriter::new(schema);
    Ok(expr.rewrite(&mut rewriter)?.data)
}

/// The type and nullability of `expr` over `schema`.
pub fn type_of(expr: &Expr, schema: &DFSchema) -> DfResult<(DataType, bool)> {
    let (_, field) = expr.to_field(schema)?;
    Ok((field.data_type().clone(), field.is_nullable()))
}

/// The schema the TaskManager plans a shipped expression against: `input`'s columns renamed
/// `c0`, `c1`, ... in order.
fn positional(input: &Schema) -> DfResult<DFSchema> {
    let fields: Vec<Field> = input.fields().iter().enumerate().map(|(i, f)| f.as_ref().clone().with_name(format!("c{i}"))).collect();
    DFSchema::try_from(Schema::new(fields))
}

/// An expression as it travels in a JobGraph: SQL text over positional column names.
pub struct ShippedExpr;

impl ShippedExpr {
    /// The text of `expr`, whose columns are columns of `input` (the logical plan's schema of
    /// the operator's input). Checked by planning it back: the result must have the type
    /// `expr` has.
    pub fn ship(expr: &Expr, input: &DFSchema) -> DfResult<String> {
        let expr = match expr {
            Expr::Alias(a) => a.expr.as_ref().clone(),
            e => e.clone(),
        };
        let rewritten = expr
            .clone()
            .transform(|e| match e {
                Expr::Column(c) => {
                    let i = input.index_of_column(&c)?;
                    Ok(Transformed::yes(Expr::Column(Column::new_unqualified(format!("c{i}")))))
                }
                other => Ok(Transformed::no(other)),
            })?
            .data;
        let text = Unparser::new(&ShipDialect).expr_to_sql(&rewritten)?.to_string();
        let want = expr.get_type(input)?;
        let arrow_input = Schema::new(input.fields().iter().map(|f| f.as_ref().clone()).collect::<Vec<_>>());
        let back = Self::plan(&text, &arrow_input)?;
        let got = back.get_type(&positional(&arrow_input)?)?;
        if got != want {
            return Err(DataFusionError::Plan(format!(
                "the expression {expr} does not survive the trip to the TaskManagers (as `{text}` it is {got}, not {want}); \
                 write it another way, e.g. with an explicit CAST"
            )));
        }
        Ok(text)
    }

    /// The logical expression of `text` over `input` (positional names), coerced.
    pub fn plan(text: &str, input: &Schema) -> DfResult<Expr> {
        let schema = positional(input)?;
        let dialect = GenericDialect {};
        let ast = Parser::new(&dialect)
            .try_with_sql(text)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| DataFusionError::Plan(format!("shipped expression `{text}` does not parse: {e}")))?;
        let tables = HashMap::new();
        let provider = Provider { functions: Functions::get(), tables: &tables };
        let planner = SqlToRel::new_with_options(&provider, parser_options());
        let expr = planner.sql_to_expr(ast, &schema, &mut PlannerContext::new())?;
        coerce(expr, &schema)
    }

    /// The physical expression of `text` over `input`, ready to evaluate batches of `input`.
    pub fn physical(text: &str, input: &Schema) -> DfResult<Arc<dyn PhysicalExpr>> {
        let expr = Self::plan(text, input)?;
        let schema = positional(input)?;
        datafusion_physical_expr::create_physical_expr(&expr, &schema, &ExecutionProps::new(), &PhysicalPlanningContext::default())
    }
}

/// DataFusion's default unparser dialect, except that a timestamp keeps its precision in a
/// cast (`TIMESTAMP(3)`; the default writes `TIMESTAMP`, which plans back as nanoseconds).
struct ShipDialect;

impl datafusion_sql::unparser::dialect::Dialect for ShipDialect {
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        datafusion_sql::unparser::dialect::DefaultDialect {}.identifier_quote_style(identifier)
    }

    fn timestamp_cast_dtype(&self, unit: &arrow_schema::TimeUnit, tz: &Option<Arc<str>>) -> datafusion_sql::sqlparser::ast::DataType {
        use arrow_schema::TimeUnit;
        use datafusion_sql::sqlparser::ast::{DataType as SqlType, TimezoneInfo};
        let precision = match unit {
            TimeUnit::Second => 0,
            TimeUnit::Millisecond => 3,
            TimeUnit::Microsecond => 6,
            TimeUnit::Nanosecond => 9,
        };
        SqlType::Timestamp(Some(precision), if tz.is_some() { TimezoneInfo::WithTimeZone } else { TimezoneInfo::None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
    use datafusion_expr::{col, lit};

    #[test]
    fn an_expression_ships_as_text_and_evaluates_on_the_other_side() {
        let input = DFSchema::try_from_qualified_schema(
            "t",
            &Schema::new(vec![Field::new("word", DataType::Utf8, true), Field::new("n", DataType::Int64, true)]),
        )
        .unwrap();
        let provider_tables = HashMap::new();
        let provider = Provider { functions: Functions::get(), tables: &provider_tables };
        let upper = provider.get_function_meta("UPPER").unwrap();
        let expr = coerce(upper.call(vec![col("t.word")]), &input).unwrap();
        let text = ShippedExpr::ship(&expr, &input).unwrap();
        assert_eq!(text, "upper(c0)");
        let plus = coerce(col("t.n") + lit(1i32), &input).unwrap();
        let plus_text = ShippedExpr::ship(&plus, &input).unwrap();

        let arrow = Schema::new(vec![Field::new("word", DataType::Utf8, true), Field::new("n", DataType::Int64, true)]);
        let batch = RecordBatch::try_new(
            Arc::new(arrow.clone()),
            vec![Arc::new(StringArray::from(vec!["a", "b"])), Arc::new(Int64Array::from(vec![1, 2]))],
        )
        .unwrap();
        let out = ShippedExpr::physical(&text, &arrow).unwrap().evaluate(&batch).unwrap().into_array(2).unwrap();
        let out = out.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((out.value(0), out.value(1)), ("A", "B"));
        let out = ShippedExpr::physical(&plus_text, &arrow).unwrap().evaluate(&batch).unwrap().into_array(2).unwrap();
        assert_eq!(out.as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec(), vec![2, 3]);
    }

    #[test]
    fn a_timestamp_cast_keeps_its_precision_on_the_trip() {
        use arrow_schema::TimeUnit;
        let input = DFSchema::try_from(Schema::new(vec![Field::new("n", DataType::Int64, true)])).unwrap();
        for (unit, text) in [
            (TimeUnit::Second, "CAST(NULL AS TIMESTAMP(0))"),
            (TimeUnit::Millisecond, "CAST(NULL AS TIMESTAMP(3))"),
            (TimeUnit::Microsecond, "CAST(NULL AS TIMESTAMP(6))"),
            (TimeUnit::Nanosecond, "CAST(NULL AS TIMESTAMP(9))"),
        ] {
            let null = datafusion_expr::cast(Expr::Literal(datafusion_common::ScalarValue::Null, None), DataType::Timestamp(unit, None));
            assert_eq!(ShippedExpr::ship(&null, &input).unwrap(), text);
        }
    }
}

impl Functions {
    /// DataFusion's configuration, as the planner sees it.
    pub fn options(&self) -> &ConfigOptions {
        &self.options
    }

    /// The scalar function names SQL can call (lower case, aliases included), sorted.
    pub fn scalar_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.scalars.keys().cloned().collect();
        names.sort();
        names
    }
}
