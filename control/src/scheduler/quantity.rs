//! Resource quantities as the scheduler counts them: CPU in millicores, everything else in
//! whole units (bytes, pods), as upstream's `resource.Quantity.MilliValue()` and `Value()`.
//!
//! A quantity that does not parse counts as zero: the API server validated it on write, so
//! a bad one can only come from a server that does not, and zero is what upstream's
//! lenient parsing gives for those too.

/// `s` in thousandths of a unit ("500m" → 500, "2" → 2000, "1.5" → 1500), rounded up.
pub fn milli(s: &str) -> i64 {
    parse(s).map(|v| ceil(v * 1000.0)).unwrap_or(0)
}

/// `s` in whole units ("4Gi" → 4294967296, "1k" → 1000, "100m" → 1), rounded up.
pub fn units(s: &str) -> i64 {
    parse(s).map(ceil).unwrap_or(0)
}

/// Whether `s` is a quantity at all (what the API server's validation asks).
pub fn is_valid(s: &str) -> bool {
    parse(s).is_some()
}

fn ceil(v: f64) -> i64 {
    // Quantities beyond i64 saturate, as `as` does, instead of wrapping.
    v.ceil() as i64
}

fn parse(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    // Decimal exponent forms ("1e3", "1E3").
    if let Some(exp) = suffix.strip_prefix(['e', 'E']).and_then(|e| e.parse::<i32>().ok()) {
        return Some(number.parse::<f64>().ok()? * 10f64.powi(exp));
    }
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let value = number.parse::<f64>().ok()?;
    value.is_finite().then_some(value * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_in_millicores() {
        assert_eq!(milli("2"), 2000);
        assert_eq!(milli("500m"), 500);
        assert_eq!(milli("1.5"), 1500);
        assert_eq!(milli("0.0001"), 1, "rounded up, as upstream's MilliValue");
        assert_eq!(milli("bogus"), 0);
    }

    #[test]
    fn memory_in_bytes() {
        assert_eq!(units("4Gi"), 4 << 30);
        assert_eq!(units("128Mi"), 128 << 20);
        assert_eq!(units("1k"), 1000);
        assert_eq!(units("1e3"), 1000);
        assert_eq!(units("110"), 110);
        assert_eq!(units("100m"), 1);
    }
}
