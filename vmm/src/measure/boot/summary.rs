//! min / median / max over the runs.

use serde::Serialize;

/// min / median / max.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarises `v` (must be non-empty).
    pub fn of(mut v: Vec<f64>) -> Summary {
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            min: v[0],
            median,
            max: v[n - 1],
        }
    }
}

/// `v` in thousandths (µs -> ms).
pub(crate) fn ms(v: &Summary) -> Summary {
    Summary {
        min: v.min / 1000.0,
        median: v.median / 1000.0,
        max: v.max / 1000.0,
    }
}

/// `v` in 1024ths (KiB -> MiB).
pub(crate) fn mib(v: &Summary) -> Summary {
    Summary {
        min: v.min / 1024.0,
        median: v.median / 1024.0,
        max: v.max / 1024.0,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_min_median_max() {
        assert_eq!(
            Summary::of(vec![3.0, 1.0, 2.0]),
            Summary {
                min: 1.0,
                median: 2.0,
                max: 3.0
            }
        );
        assert_eq!(Summary::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }
}
