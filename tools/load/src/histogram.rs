//! A log-linear histogram of microsecond values, in the spirit of HDR
//! histograms: exact below 512 µs, and above that each power of two is cut
//! into 256 equal buckets, so a reported value is within 0.2 % of the true
//! one (half a bucket). Fixed memory (about 117 KiB, allocated on the first
//! value), O(1) to record, exact count, min, max and mean.
//!
//! Percentiles use the nearest-rank definition: `p` is the smallest recorded
//! value with at least `p` % of all values at or below it.

use serde::Serialize;

/// Values below this are counted exactly, one bucket each.
const EXACT: u64 = 512;
/// Buckets per power of two above [`EXACT`].
const SUB_BITS: u32 = 8;
const SUB: u64 = 1 << SUB_BITS;
/// log2(EXACT).
const FIRST_EXP: u32 = 9;
const BUCKETS: usize = EXACT as usize + (64 - FIRST_EXP as usize) * SUB as usize;

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= FIRST_EXP
    let shift = exp - SUB_BITS;
    let sub = (v >> shift) - SUB; // 0..SUB
    EXACT as usize + (exp - FIRST_EXP) as usize * SUB as usize + sub as usize
}

/// The lowest value of bucket `i` and the bucket's width.
fn bounds(i: usize) -> (u64, u64) {
    if (i as u64) < EXACT {
        return (i as u64, 1);
    }
    let j = i - EXACT as usize;
    let exp = FIRST_EXP + (j / SUB as usize) as u32;
    let sub = (j % SUB as usize) as u64;
    let shift = exp - SUB_BITS;
    ((SUB + sub) << shift, 1 << shift)
}

impl Histogram {
    pub fn new() -> Self {
        Histogram::default()
    }

    pub fn record(&mut self, v: u64) {
        self.record_n(v, 1);
    }

    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
            self.min = v;
            self.max = v;
        }
        self.counts[index(v)] += n;
        self.total += n;
        self.sum += u128::from(v) * u128::from(n);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn min(&self) -> Option<u64> {
        (self.total > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.total > 0).then(|| self.sum as f64 / self.total as f64)
    }

    /// The `p`-th percentile (0–100), nearest rank; `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let p = p.clamp(0.0, 100.0);
        if p >= 100.0 {
            return Some(self.max);
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bounds(i);
                let value = if width == 1 { low } else { low + width / 2 };
                return Some(value.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// Percentiles in milliseconds (the histogram holds microseconds).
    pub fn summary_ms(&self) -> Summary {
        let ms = |v: Option<u64>| v.map_or(0.0, |v| round3(v as f64 / 1000.0));
        Summary {
            count: self.total,
            p50: ms(self.percentile(50.0)),
            p95: ms(self.percentile(95.0)),
            p99: ms(self.percentile(99.0)),
            p999: ms(self.percentile(99.9)),
            max: ms(self.max()),
            mean: self.mean().map_or(0.0, |m| round3(m / 1000.0)),
            min: ms(self.min()),
        }
    }
}

/// A histogram's percentiles, in milliseconds (0 when nothing was recorded;
/// check `count`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub min: f64,
    pub count: u64,
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_every_value() {
        let mut expected_low = 0;
        for i in 0..BUCKETS {
            let (low, width) = bounds(i);
            assert_eq!(low, expected_low, "bucket {i}");
            assert_eq!(index(low), i);
            assert_eq!(index(low + (width - 1)), i);
            expected_low = low.wrapping_add(width);
        }
        assert_eq!(expected_low, 0, "the last bucket ends at u64::MAX");
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }
}
