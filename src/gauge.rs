//! Scrape-time gauges: a value read when Prometheus scrapes, written straight into the
//! encoder (for `prometheus-client` collectors in `admin` and `enforce`).

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// One gauge named `name` (the registry's prefix is added) with `value`.
pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<Unit>, value: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?;
    g.encode(m)
}

/// A gauge that is 1 when `value`, else 0.
pub fn bool_gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: bool) -> Result<(), std::fmt::Error> {
    gauge(encoder, name, help, None, if value { 1.0 } else { 0.0 })
}
