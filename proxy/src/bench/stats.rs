//! Figures with their spread: every measured quantity is kept as min/median/max over its
//! rounds, and a ratio of two such figures carries the range the rounds allow, so a table
//! can say when a difference is smaller than the noise that produced it.

use serde::{Deserialize, Serialize};

/// One figure over its rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// How many rounds it summarises.
    pub n: usize,
}

impl Stat {
    /// `None` without samples (or with only non-finite ones: a failed round is not a zero).
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            min: v[0],
            median,
            max: v[n - 1],
            n,
        })
    }

    /// (max − min) / median: how much the rounds disagree, relative to the figure.
    pub fn spread(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / self.median.abs()
        }
    }

    pub fn scaled(self, k: f64) -> Self {
        Self {
            min: self.min * k,
            median: self.median * k,
            max: self.max * k,
            n: self.n,
        }
    }

    /// `median` with the spread as a percentage, for tables: `12.3 ±4%`.
    pub fn show(&self, precision: usize) -> String {
        if self.n < 2 {
            return format!("{:.precision$}", self.median);
        }
        format!("{:.precision$} ±{:.0}%", self.median, self.spread() * 50.0)
    }
}

/// `a / b` over rounds: the ratio of the medians, and the widest range the rounds allow
/// (a's smallest over b's largest, a's largest over b's smallest).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub median: f64,
    pub low: f64,
    pub high: f64,
    /// The range includes 1: the rounds do not show a difference, whatever the median says.
    pub within_spread: bool,
}

impl Ratio {
    pub fn of(a: &Stat, b: &Stat) -> Option<Self> {
        if b.min <= 0.0 || b.median <= 0.0 {
            return None;
        }
        let (median, low, high) = (a.median / b.median, a.min / b.max, a.max / b.min);
        Some(Self {
            median,
            low,
            high,
            within_spread: low <= 1.0 && 1.0 <= high && (low < high),
        })
    }

    /// `2.31 (2.10–2.52)`, or `≈ 1.03 (0.97–1.09, within spread)` when the range holds 1.
    pub fn show(&self) -> String {
        if self.low == self.high {
            return format!("{:.2}", self.median);
        }
        let range = format!("{:.2}–{:.2}", self.low, self.high);
        if self.within_spread {
            format!("≈ {:.2} ({range}, within spread)", self.median)
        } else {
            format!("{:.2} ({range})", self.median)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).expect("samples");
        assert_eq!((s.min, s.median, s.max, s.n), (1.0, 2.0, 3.0, 3));
        let s = Stat::of(&[4.0, 1.0, 3.0, 2.0]).expect("samples");
        assert_eq!(s.median, 2.5);
        assert_eq!(Stat::of(&[]), None);
        assert_eq!(Stat::of(&[f64::NAN, 5.0]).expect("one finite").n, 1);
    }

    #[test]
    fn spread_is_range_over_median() {
        let s = Stat::of(&[90.0, 100.0, 110.0]).expect("samples");
        assert!((s.spread() - 0.2).abs() < 1e-12);
        assert_eq!(s.show(1), "100.0 ±10%");
        assert_eq!(Stat::of(&[7.0]).expect("one").show(1), "7.0");
    }

    #[test]
    fn ratio_inside_the_noise_is_flagged() {
        let a = Stat::of(&[100.0, 104.0, 120.0]).expect("a");
        let b = Stat::of(&[95.0, 100.0, 110.0]).expect("b");
        let r = Ratio::of(&a, &b).expect("ratio");
        assert!((r.median - 1.04).abs() < 1e-12);
        assert!(r.within_spread, "{r:?}");
        assert!(r.show().starts_with("≈ 1.04"), "{}", r.show());
    }

    #[test]
    fn ratio_beyond_the_noise_is_not_flagged() {
        let a = Stat::of(&[300.0, 310.0, 320.0]).expect("a");
        let b = Stat::of(&[95.0, 100.0, 105.0]).expect("b");
        let r = Ratio::of(&a, &b).expect("ratio");
        assert!(!r.within_spread);
        assert!((r.low - 300.0 / 105.0).abs() < 1e-12 && (r.high - 320.0 / 95.0).abs() < 1e-12);
        assert_eq!(r.show(), "3.10 (2.86–3.37)");
        // One round: no range to judge by, so nothing is flagged.
        let one = Ratio::of(&Stat::of(&[1.0]).expect("a"), &Stat::of(&[1.0]).expect("b")).expect("r");
        assert!(!one.within_spread);
        assert_eq!(Ratio::of(&a, &Stat::of(&[0.0]).expect("zero")), None);
    }
}
