//! Kubernetes `resource.Quantity` with exact arithmetic: quota usage is summed over many
//! objects and compared with a hard limit, so a float would let `0.1+0.2` pass a `0.3`
//! limit, or refuse it. Values are held in nano-units (the finest suffix, `n`) as `i128`,
//! which covers `Ei` (2^60) times 10^9 with room to spare.
//!
//! The printed form follows upstream's canonical form: the first operand's format
//! (binary `Ki`…`Ei`, decimal `n`…`E`, or exponent `e3`) with the largest suffix that keeps
//! the number whole; binary falls back to decimal below 1024 or for fractions, as upstream.

use std::{cmp::Ordering, fmt};

const NANO: i128 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    BinarySi,
    DecimalSi,
    DecimalExponent,
}

#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
pub struct ParseError;

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}
impl Eq for Quantity {}
impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Default for Quantity {
    fn default() -> Self {
        Self::zero()
    }
}

impl Quantity {
    pub const fn zero() -> Self {
        Self {
            nanos: 0,
            format: Format::DecimalSi,
        }
    }

    /// A whole count (pods, services…).
    pub const fn count(n: i64) -> Self {
        Self {
            nanos: n as i128 * NANO,
            format: Format::DecimalSi,
        }
    }

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(split);
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
            return Err(ParseError);
        }
        let (base, exp, format): (i128, i32, Format) = match suffix {
            "" => (10, 0, Format::DecimalSi),
            "n" => (10, -9, Format::DecimalSi),
            "u" => (10, -6, Format::DecimalSi),
            "m" => (10, -3, Format::DecimalSi),
            "k" => (10, 3, Format::DecimalSi),
            "M" => (10, 6, Format::DecimalSi),
            "G" => (10, 9, Format::DecimalSi),
            "T" => (10, 12, Format::DecimalSi),
            "P" => (10, 15, Format::DecimalSi),
            "E" => (10, 18, Format::DecimalSi),
            "Ki" => (2, 10, Format::BinarySi),
            "Mi" => (2, 20, Format::BinarySi),
            "Gi" => (2, 30, Format::BinarySi),
            "Ti" => (2, 40, Format::BinarySi),
            "Pi" => (2, 50, Format::BinarySi),
            "Ei" => (2, 60, Format::BinarySi),
            other => {
                let e = other.strip_prefix(['e', 'E']).ok_or(ParseError)?;
                let e: i32 = e.parse().map_err(|_| ParseError)?;
                if !(-18..=18).contains(&e) {
                    return Err(ParseError);
                }
                (10, e, Format::DecimalExponent)
            }
        };
        // The digits as an integer over 10^frac_len, then scaled to nano-units. Digits
        // beyond nano precision round up, as upstream's quantities round to nano.
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 36 {
            return Err(ParseError);
        }
        let mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| ParseError)?
        };
        let frac_len = frac_part.len() as i32;
        let nanos = if base == 2 {
            let scaled = mantissa.checked_mul(1i128 << exp).ok_or(ParseError)?;
            scale10(scaled, 9 - frac_len)?
        } else {
            scale10(mantissa, 9 + exp - frac_len)?
        };
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
            format,
        })
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// The sum, in this quantity's format, or the other's when this one is zero (as
    /// upstream: `0 + 256Mi` prints `256Mi`).
    pub fn add(&self, other: &Self) -> Self {
        Self {
            nanos: self.nanos.saturating_add(other.nanos),
            format: if self.nanos == 0 { other.format } else { self.format },
        }
    }

    pub fn sub(&self, other: &Self) -> Self {
        Self {
            nanos: self.nanos.saturating_sub(other.nanos),
            format: self.format,
        }
    }

    /// Thousandths of a unit, rounded up (upstream's `MilliValue`).
    pub fn milli_value(&self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }
}

/// `v * 10^e`, rounding a division up (away from zero for positive values).
fn scale10(v: i128, e: i32) -> Result<i128, ParseError> {
    if e >= 0 {
        10i128
            .checked_pow(e as u32)
            .and_then(|p| v.checked_mul(p))
            .ok_or(ParseError)
    } else {
        let p = 10i128.checked_pow((-e) as u32).ok_or(ParseError)?;
        Ok(div_ceil(v, p))
    }
}

fn div_ceil(v: i128, d: i128) -> i128 {
    let q = v / d;
    if v % d > 0 { q + 1 } else { q }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        let whole = abs.is_multiple_of(NANO as u128);
        if self.format == Format::BinarySi && whole && abs >= 1024 * NANO as u128 {
            let mut units = abs / NANO as u128;
            let mut i = 0;
            while i < 6 && units.is_multiple_of(1024) {
                units /= 1024;
                i += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][i];
            return write!(f, "{sign}{units}{suffix}");
        }
        // Decimal: the largest exponent (a multiple of 3, from -9 to 18) that keeps the
        // mantissa whole.
        let mut mantissa = abs;
        let mut exp = -9;
        while exp < 18 && mantissa.is_multiple_of(1000) {
            mantissa /= 1000;
            exp += 3;
        }
        if self.format == Format::DecimalExponent {
            return if exp == 0 {
                write!(f, "{sign}{mantissa}")
            } else {
                write!(f, "{sign}{mantissa}e{exp}")
            };
        }
        let suffix = match exp {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            0 => "",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            _ => "E",
        };
        write!(f, "{sign}{mantissa}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_suffix_exactly() {
        assert_eq!(q("500m"), q("0.5"));
        assert_eq!(q("1k"), q("1000"));
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("1Ki"), q("1024"));
        assert_eq!(q("1.5Gi"), q("1536Mi"));
        assert_eq!(q("100n").milli_value(), 1, "rounded up to a milli");
        assert_eq!(q("1Ei"), Quantity::count(1 << 60));
        assert_eq!(q("-2"), Quantity::zero().sub(&q("2")));
        assert_eq!(q(".5"), q("500m"));
    }

    #[test]
    fn refuses_what_upstream_refuses() {
        for bad in ["", "abc", "1.2.3", "1Kb", "1 Gi", "m", "--1", "1e", "1e99"] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn sums_are_exact() {
        let sum = q("0.1").add(&q("0.2"));
        assert_eq!(sum, q("0.3"));
        assert_eq!(sum.to_string(), "300m");
        assert!(q("100m").add(&q("100m")).add(&q("100m")) <= q("300m"));
    }

    #[test]
    fn prints_in_the_first_operands_canonical_form() {
        assert_eq!(q("1Gi").add(&q("512Mi")).to_string(), "1536Mi");
        assert_eq!(q("500m").add(&q("500m")).to_string(), "1");
        assert_eq!(q("1000").to_string(), "1k");
        assert_eq!(q("1200").to_string(), "1200");
        assert_eq!(q("1500m").to_string(), "1500m");
        assert_eq!(q("512").to_string(), "512");
        assert_eq!(
            q("100Mi").add(&q("1")).to_string(),
            "104857601",
            "binary but not a multiple of 1024"
        );
        assert_eq!(q("0.5Ki").to_string(), "512", "binary below 1024 prints decimal");
        assert_eq!(q("2e3").to_string(), "2e3");
        assert_eq!(Quantity::zero().to_string(), "0");
        assert_eq!(q("-1Gi").to_string(), "-1Gi");
        assert_eq!(Quantity::count(3).to_string(), "3");
        assert_eq!(
            q("0").add(&q("256Mi")).to_string(),
            "256Mi",
            "zero takes the other's format"
        );
    }
}
