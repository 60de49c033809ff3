//! Task metrics in the Prometheus exposition format, the same on the JobManager's `/metrics`
//! (every task of the cluster, as the heartbeats brought them) and on each TaskManager's (its
//! own tasks, read when scraped). Built with `prometheus-client` from readings taken at scrape
//! time: nothing is registered ahead, so a task that ends leaves no stale series behind.
//!
//! Every metric is listed in `docs/metrics.md`; a test there checks that the names agree.

use crate::TaskMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of one series, in order.
pub type Labels = Vec<(String, String)>;

/// A task's reading with the labels that identify it: `job_id`, `job_name`, `task_name`,
/// `subtask_index`, `taskmanager_id`.
#[derive(Debug, Clone)]
pub struct TaskSeries {
    pub labels: Labels,
    pub metrics: TaskMetrics,
}

/// The labels of a task's series.
pub fn task_labels(job_id: &str, job_name: &str, task_name: &str, subtask: u32, taskmanager: &str) -> Labels {
    [
        ("job_id", job_id),
        ("job_name", job_name),
        ("task_name", task_name),
        ("subtask_index", &subtask.to_string()),
        ("taskmanager_id", taskmanager),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// One value of a metric family: a counter or a gauge, integral or not.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    Counter(u64),
    Seconds(f64),
    Gauge(i64),
    GaugeF(f64),
}

/// A metric family: its name (without the `_total` a counter gets), help, and one value per
/// label set.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub series: Vec<(Labels, Value)>,
}

/// The task metrics, one family per metric (see `docs/metrics.md`).
pub fn task_families(tasks: &[TaskSeries]) -> Vec<Family> {
    type Field = (&'static str, &'static str, fn(&TaskMetrics) -> Value);
    let fields: [Field; 18] = [
        ("weir_task_records_in", "Rows the task took in (from its source or its input channels).", |m| Value::Counter(m.records_in)),
        ("weir_task_records_out", "Rows the task's chain emitted.", |m| Value::Counter(m.records_out)),
        ("weir_task_bytes_in", "Bytes taken from the input channels.", |m| Value::Counter(m.bytes_in)),
        ("weir_task_bytes_out", "Bytes of the rows sent to the output channels.", |m| Value::Counter(m.bytes_out)),
        ("weir_task_busy_seconds", "Time the task spent working.", |m| Value::Seconds(m.busy_ms as f64 / 1000.0)),
        ("weir_task_idle_seconds", "Time the task waited for input.", |m| Value::Seconds(m.idle_ms as f64 / 1000.0)),
        ("weir_task_backpressured_seconds", "Time the task waited for room on an output channel.", |m| {
            Value::Seconds(m.backpressured_ms as f64 / 1000.0)
        }),
        ("weir_task_input_queue_buffers", "Buffers queued on the task's input channels.", |m| Value::Gauge(m.input_queue as i64)),
        ("weir_task_input_credit_buffers", "Buffers the input channels still have room for.", |m| Value::Gauge(m.input_credit as i64)),
        ("weir_task_output_queue_buffers", "Buffers queued on the task's output channels.", |m| Value::Gauge(m.output_queue as i64)),
        ("weir_task_output_credit_buffers", "Buffers the output channels still have room for.", |m| Value::Gauge(m.output_credit as i64)),
        (
            "weir_task_debloated_buffer_size_bytes",
            "Buffer size the task's input gate last asked its senders for (buffer debloating); 0 before any.",
            |m| Value::Gauge(m.debloated_buffer_size as i64),
        ),
        ("weir_task_state_size_bytes", "Bytes of the task's state in its last checkpoint.", |m| Value::Gauge(m.state_size as i64)),
        ("weir_task_last_checkpoint_id", "The last checkpoint the task acknowledged.", |m| Value::Gauge(m.checkpoint_id as i64)),
        ("weir_task_last_checkpoint_sync_seconds", "The synchronous part of the task's last checkpoint.", |m| {
            Value::GaugeF(m.checkpoint_sync_ms as f64 / 1000.0)
        }),
        ("weir_task_last_checkpoint_async_seconds", "The asynchronous part of the task's last checkpoint.", |m| {
            Value::GaugeF(m.checkpoint_async_ms as f64 / 1000.0)
        }),
        ("weir_task_last_checkpoint_alignment_seconds", "The barrier alignment of the task's last checkpoint.", |m| {
            Value::GaugeF(m.checkpoint_alignment_ms as f64 / 1000.0)
        }),
        ("weir_task_last_checkpoint_persisted_bytes", "In-flight bytes the task's last checkpoint persisted.", |m| {
            Value::Gauge(m.checkpoint_persisted_bytes as i64)
        }),
    ];
    fields
        .into_iter()
        .map(|(name, help, value)| Family { name, help, series: tasks.iter().map(|t| (t.labels.clone(), value(&t.metrics))).collect() })
        .collect()
}

/// Families rendered in the OpenMetrics text format (which Prometheus scrapes), ending in
/// `# EOF`. Families without series are left out.
pub fn render(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String does not fail");
    out
}

#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in self.0.iter().filter(|f| !f.series.is_empty()) {
            let metric_type = match family.series[0].1 {
                Value::Counter(_) | Value::Seconds(_) => MetricType::Counter,
                Value::Gauge(_) | Value::GaugeF(_) => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, metric_type)?;
            if let [(labels, value)] = &family.series[..] {
                if labels.is_empty() {
                    // One series without labels: `name value`, not `name{} value`.
                    encode_value(*value, metric)?;
                    continue;
                }
            }
            for (labels, value) in &family.series {
                encode_value(*value, metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

fn encode_value(value: Value, encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
    match value {
        Value::Counter(v) => ConstCounter::new(v).encode(encoder),
        Value::Seconds(v) => ConstCounter::new(v).encode(encoder),
        Value::Gauge(v) => ConstGauge::new(v).encode(encoder),
        Value::GaugeF(v) => ConstGauge::new(v).encode(encoder),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_metrics_render_with_their_labels_and_types() {
        let m = TaskMetrics { records_in: 42, busy_ms: 1500, input_queue: 3, ..Default::default() };
        let text = render(task_families(&[TaskSeries { labels: task_labels("j1", "count", "map", 0, "tm-1"), metrics: m }]));
        assert!(text.contains("# TYPE weir_task_records_in counter"), "{text}");
        assert!(
            text.contains(
                r#"weir_task_records_in_total{job_id="j1",job_name="count",task_name="map",subtask_index="0",taskmanager_id="tm-1"} 42"#
            ),
            "{text}"
        );
        assert!(text.contains("weir_task_busy_seconds_total{") && text.contains("} 1.5\n"), "{text}");
        assert!(text.contains("# TYPE weir_task_input_queue_buffers gauge"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn every_task_metric_is_documented() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md")).unwrap();
        let m = TaskSeries { labels: task_labels("j", "n", "t", 0, "tm"), metrics: TaskMetrics::default() };
        for family in task_families(&[m]) {
            let name = match family.series[0].1 {
                Value::Counter(_) | Value::Seconds(_) => format!("`{}_total`", family.name),
                Value::Gauge(_) | Value::GaugeF(_) => format!("`{}`", family.name),
            };
            assert!(docs.contains(&name), "docs/metrics.md does not list {name}");
        }
    }

    #[test]
    fn a_series_without_labels_has_no_braces() {
        let text = render(vec![Family { name: "weir_taskmanagers", help: "h", series: vec![(vec![], Value::Gauge(3))] }]);
        assert!(text.contains("\nweir_taskmanagers 3\n"), "{text}");
    }

    #[test]
    fn no_task_no_series() {
        assert_eq!(render(task_families(&[])), "# EOF\n");
    }
}
