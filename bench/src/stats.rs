//! Summary statistics over the runs of one path.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Median, minimum and maximum of a set of per-run figures (ns per packet).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`; empty input or a NaN is an error rather than a silent zero.
    pub fn of(samples: &[f64]) -> Result<Summary> {
        if samples.is_empty() {
            bail!("no samples to summarise");
        }
        if samples.iter().any(|s| s.is_nan()) {
            bail!("a sample is NaN: {samples:?}");
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Ok(Summary {
            median: median_of_sorted(&sorted),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }

    /// Every statistic minus one constant (the floor's median), so min <= median <= max
    /// still holds and the spread stays the path's own.
    pub fn minus(&self, floor: f64) -> Summary {
        Summary {
            median: self.median - floor,
            min: self.min - floor,
            max: self.max - floor,
        }
    }

    /// Run-to-run noise: how far the median sits above the best run, as a fraction of the
    /// median. 0 when every run agrees; large when the machine was busy during some runs.
    pub fn noise(&self) -> f64 {
        if self.median <= 0.0 {
            return 0.0;
        }
        (self.median - self.min) / self.median
    }
}

/// Middle element of an odd count, mean of the two middle elements of an even count.
pub fn median_of_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    assert!(n > 0, "median of nothing");
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_count_is_the_middle_element() {
        let s = Summary::of(&[9.0, 1.0, 5.0]).unwrap();
        assert_eq!(s.median, 5.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 9.0);
    }

    #[test]
    fn median_of_even_count_is_the_mean_of_the_two_middle_elements() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 10.0]).unwrap();
        assert_eq!(s.median, 3.5);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 10.0);
    }

    #[test]
    fn single_sample_is_median_min_and_max() {
        let s = Summary::of(&[7.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (7.0, 7.0, 7.0));
    }

    #[test]
    fn median_ignores_one_outlier() {
        let s = Summary::of(&[6.0, 6.0, 6.0, 7.0, 900.0]).unwrap();
        assert_eq!(s.median, 6.0);
        assert_eq!(s.max, 900.0);
    }

    #[test]
    fn empty_and_nan_input_are_errors() {
        assert!(Summary::of(&[]).is_err());
        assert!(Summary::of(&[1.0, f64::NAN]).is_err());
    }

    #[test]
    fn minus_subtracts_one_constant_from_every_statistic() {
        let path = Summary::of(&[10.0, 12.0, 20.0]).unwrap();
        let floor = Summary::of(&[5.0, 6.0, 8.0]).unwrap();
        let net = path.minus(floor.median);
        assert_eq!((net.median, net.min, net.max), (6.0, 4.0, 14.0));
        assert_eq!(floor.minus(floor.median).median, 0.0);
    }

    #[test]
    fn noise_is_median_over_min_distance_relative_to_median() {
        assert_eq!(Summary::of(&[8.0, 8.0, 8.0]).unwrap().noise(), 0.0);
        let s = Summary::of(&[6.0, 8.0, 9.0]).unwrap();
        assert!((s.noise() - 0.25).abs() < 1e-12);
        // A net-of-floor median of zero has no meaningful relative noise.
        assert_eq!(Summary::of(&[0.0, 0.0]).unwrap().noise(), 0.0);
    }
}
