//! Prometheus text exposition: a collector that reads the services' lock-free counters at
//! scrape time. Label sets are bounded: controller index, subsystem NQN, namespace ID,
//! device and volume names, opcode kind -- never a client address or command.

use std::borrow::Cow;

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Labels of one sample.
pub type Labels = Vec<(Cow<'static, str>, String)>;

/// Builds labels from `(name, value)` pairs.
pub fn labels<const N: usize>(pairs: [(&'static str, String); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (Cow::Borrowed(k), v))
        .collect()
}

/// One histogram sample: per-bucket (not cumulative) counts by upper bound.
#[derive(Debug, Clone, Default)]
pub struct HistogramSample {
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// `(upper bound, observations in this bucket only)`, ascending, finite bounds; the
    /// encoder accumulates them and adds `+Inf` with `count`.
    pub buckets: Vec<(f64, u64)>,
}

/// Writes metric families into a scrape.
pub struct Families<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl<'a> Families<'a> {
    /// Wraps a collector's encoder.
    pub fn new(encoder: DescriptorEncoder<'a>) -> Self {
        Self { encoder }
    }

    /// A counter family (the encoder appends `_total`).
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A gauge family (integer values, or fractional ones such as ages in seconds).
    pub fn gauge<N: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, N)>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in samples {
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A histogram family.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, HistogramSample)>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in samples {
            family
                .encode_family(&labels)?
                .encode_histogram::<NoExemplar>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

/// Histograms carry no exemplars.
#[derive(Debug)]
struct NoExemplar;

impl EncodeLabelSet for NoExemplar {
    fn encode(
        &self,
        _: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

/// Converts a count to a gauge value, saturating.
pub fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
