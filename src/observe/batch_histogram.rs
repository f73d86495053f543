//! A Prometheus histogram for costs recorded many at a time. A stream records the time it
//! spent per SSE event as the mean over the events it handled together, so a batch of `n`
//! events is `n` observations of one value: here one bucket search and one addition, where
//! `prometheus`'s own histogram takes one call (~50 instructions) per observation.
//!
//! Invariants:
//! - it exports what `prometheus::Histogram` exports for the same observations: the same
//!   family, buckets, count and sum (tested against it, the sum to rounding);
//! - the count is the sum of the bucket counters read in the same pass as the buckets, so a
//!   scrape never shows a bucket above the count;
//! - a stream's observations are kept in its own [`LocalBatches`] and added to the shared
//!   counters when it flushes (at the latest when it is dropped): a few atomic additions per
//!   stream, not several per event.

use prometheus::core::{Collector, Desc};
use prometheus::proto;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The shared histogram (cheap to clone: the clones are one histogram).
#[derive(Clone)]
pub struct BatchHistogram(Arc<Shared>);

struct Shared {
    desc: Desc,
    /// Upper bounds, ascending and finite.
    bounds: Vec<f64>,
    /// Observations per bucket: `counts[i]` those at most `bounds[i]` and above the bound
    /// before; the last one those above every bound (or not a number).
    counts: Vec<AtomicU64>,
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

impl BatchHistogram {
    /// `bounds` must be ascending and finite (the `+Inf` bucket is implied).
    pub fn new(name: &str, help: &str, bounds: Vec<f64>) -> prometheus::Result<BatchHistogram> {
        if bounds.is_empty()
            || bounds.iter().any(|b| !b.is_finite())
            || bounds.windows(2).any(|pair| pair[0] >= pair[1])
        {
            return Err(prometheus::Error::Msg(format!(
                "{name}: histogram buckets must be finite and ascending"
            )));
        }
        let desc = Desc::new(name.into(), help.into(), Vec::new(), HashMap::new())?;
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Ok(BatchHistogram(Arc::new(Shared {
            desc,
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        })))
    }

    /// A recorder of its own for one stream.
    pub fn local(&self) -> LocalBatches {
        LocalBatches {
            histogram: self.clone(),
            counts: vec![0; self.0.counts.len()],
            sum: 0.0,
        }
    }
}

impl Collector for BatchHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let shared = &self.0;
        let mut histogram = proto::Histogram::default();
        let mut cumulative = 0;
        for (bound, count) in shared.bounds.iter().zip(&shared.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let mut bucket = proto::Bucket::default();
            bucket.set_cumulative_count(cumulative);
            bucket.set_upper_bound(*bound);
            histogram.mut_bucket().push(bucket);
        }
        if let Some(above) = shared.counts.last() {
            cumulative += above.load(Ordering::Relaxed);
        }
        histogram.set_sample_count(cumulative);
        histogram.set_sample_sum(f64::from_bits(shared.sum.load(Ordering::Relaxed)));
        let mut metric = proto::Metric::default();
        metric.set_histogram(histogram);
        let mut family = proto::MetricFamily::default();
        family.set_name(shared.desc.fq_name.clone());
        family.set_help(shared.desc.help.clone());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        family.mut_metric().push(metric);
        vec![family]
    }
}

/// One stream's observations, not yet added to the shared histogram.
pub struct LocalBatches {
    histogram: BatchHistogram,
    counts: Vec<u64>,
    sum: f64,
}

impl LocalBatches {
    /// `times` observations of `value`.
    pub fn observe_many(&mut self, value: f64, times: u64) {
        let bounds = &self.histogram.0.bounds;
        // The first bucket whose bound is at least the value, as `prometheus` finds it; a value
        // that is not a number is in no finite bucket.
        let bucket = if value.is_nan() {
            bounds.len()
        } else {
            bounds.partition_point(|bound| *bound < value)
        };
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += times;
            self.sum += value * times as f64;
        }
    }

    /// Add what was observed to the shared histogram.
    pub fn flush(&mut self) {
        let shared = &self.histogram.0;
        for (local, count) in self.counts.iter_mut().zip(&shared.counts) {
            if *local > 0 {
                count.fetch_add(std::mem::take(local), Ordering::Relaxed);
            }
        }
        let sum = std::mem::take(&mut self.sum);
        if sum != 0.0 {
            let _ = shared
                .sum
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                    Some((f64::from_bits(bits) + sum).to_bits())
                });
        }
    }
}

impl Drop for LocalBatches {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, Histogram, HistogramOpts, Registry, TextEncoder};

    const BOUNDS: [f64; 4] = [0.000001, 0.00001, 0.0001, 0.001];

    fn exposition(registry: &Registry) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("encoded");
        String::from_utf8(out).expect("text")
    }

    /// `prometheus`'s histogram and ours, of the same name and buckets, each in a registry.
    fn registered_pair() -> (Histogram, BatchHistogram, Registry, Registry) {
        let theirs =
            Histogram::with_opts(HistogramOpts::new("cost", "help").buckets(BOUNDS.to_vec()))
                .expect("histogram");
        let ours = BatchHistogram::new("cost", "help", BOUNDS.to_vec()).expect("histogram");
        let (their_registry, our_registry) = (Registry::new(), Registry::new());
        their_registry
            .register(Box::new(theirs.clone()))
            .expect("registered");
        our_registry
            .register(Box::new(ours.clone()))
            .expect("registered");
        (theirs, ours, their_registry, our_registry)
    }

    /// Every line but the sum's, and the sum.
    fn split_sum(text: &str) -> (Vec<&str>, f64) {
        let (sums, lines): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|line| line.starts_with("cost_sum "));
        let sum = sums
            .first()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|value| value.parse().ok())
            .expect("a sum line");
        (lines, sum)
    }

    #[test]
    fn it_exports_what_the_prometheus_histogram_exports_for_the_same_observations() {
        let batches: [(f64, u64); 8] = [
            (0.0000005, 3),
            (0.000001, 2),
            (0.0000011, 7),
            (0.00005, 1),
            (0.0001, 60),
            (0.0009, 4),
            (0.5, 2),
            (f64::NAN, 1),
        ];
        let (theirs, ours, their_registry, our_registry) = registered_pair();
        let mut local = ours.local();
        for (value, times) in batches {
            for _ in 0..times {
                theirs.observe(value);
            }
            // NaN aside (a NaN sum is compared apart below).
            if !value.is_nan() {
                local.observe_many(value, times);
            }
        }
        // Nothing is shared before the stream flushes.
        assert!(exposition(&our_registry).contains("cost_count 0"));
        local.flush();
        let mut nan = ours.local();
        nan.observe_many(f64::NAN, 1);
        drop(nan);
        let (their_text, our_text) = (exposition(&their_registry), exposition(&our_registry));
        let (their_lines, _) = split_sum(&their_text);
        let (our_lines, _) = split_sum(&our_text);
        assert_eq!(our_lines, their_lines, "{our_text}\n{their_text}");
        assert!(our_text.contains("cost_count 80"), "{our_text}");
    }

    #[test]
    fn the_sum_is_the_sum_of_the_observations() {
        let (theirs, ours, their_registry, our_registry) = registered_pair();
        for stream in 0..5u32 {
            let mut local = ours.local();
            for batch in 1..20u64 {
                let value = f64::from(stream + 1) * 0.00000317 * batch as f64;
                local.observe_many(value, batch);
                for _ in 0..batch {
                    theirs.observe(value);
                }
            }
        }
        let (_, their_sum) = split_sum(&exposition(&their_registry));
        let (_, our_sum) = split_sum(&exposition(&our_registry));
        assert!(their_sum > 0.0);
        assert!(
            (our_sum - their_sum).abs() <= their_sum * 1e-9,
            "{our_sum} vs {their_sum}"
        );
    }

    #[test]
    fn buckets_must_be_finite_and_ascending() {
        for bounds in [
            vec![],
            vec![0.1, 0.1],
            vec![0.2, 0.1],
            vec![0.1, f64::INFINITY],
        ] {
            assert!(BatchHistogram::new("cost", "help", bounds).is_err());
        }
    }
}
