//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of `M` slots
//! (M prime) in which every backend owns about M/N slots, so a flow hash picks a backend
//! with one array read, and a backend change moves few flows.
//!
//! Every node must build the same table for the same backends, so a flow that moves to
//! another node (ECMP, a failed node) keeps its backend. So the table depends only on the
//! backends' identities (address and port, hashed with a fixed seed) and on M, never on
//! the order the backends arrive in or on anything node-local.

use std::net::IpAddr;

/// Cilium's default: about 160 backends at ≤ 1% disruption.
pub const DEFAULT_TABLE_SIZE: u32 = 16381;
/// The largest size accepted (a prime; Cilium's maximum).
pub const MAX_TABLE_SIZE: u32 = 131_071;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("--maglev-table-size {0}: must be a prime number, so every backend's permutation visits every slot")]
    NotPrime(u32),
    #[error("--maglev-table-size {0}: must be between 251 and {MAX_TABLE_SIZE}")]
    OutOfRange(u32),
}

/// Checks a configured table size.
pub fn validate_table_size(m: u32) -> Result<u32, MaglevError> {
    if !(251..=MAX_TABLE_SIZE).contains(&m) {
        return Err(MaglevError::OutOfRange(m));
    }
    if !is_prime(m) {
        return Err(MaglevError::NotPrime(m));
    }
    Ok(m)
}

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// A backend's identity for hashing: what every node agrees on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub address: IpAddr,
    pub port: u16,
}

impl BackendKey {
    fn bytes(&self) -> Vec<u8> {
        let mut b = match self.address {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        b.extend_from_slice(&self.port.to_be_bytes());
        b
    }
}

/// The table: for each of `M` slots, an index into `backends` as given, or an empty table
/// when there are no backends.
pub fn table(backends: &[BackendKey], m: u32) -> Vec<u32> {
    if backends.is_empty() {
        return Vec::new();
    }
    // Fill in a node-independent order: sorted by identity.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| backends[i]);
    let m64 = u64::from(m);
    let prefs: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let bytes = backends[i].bytes();
            let offset = hash(&bytes, 0x6d61_676c_6576_3031) % m64;
            let skip = hash(&bytes, 0x6d61_676c_6576_3032) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut slots = vec![u32::MAX; m as usize];
    let mut filled = 0u32;
    // Each backend in turn takes its next preferred free slot, so all get ⌊M/N⌋ or ⌈M/N⌉.
    'fill: loop {
        for (k, &(offset, skip)) in prefs.iter().enumerate() {
            let mut slot = (offset + next[k] * skip) % m64;
            while slots[slot as usize] != u32::MAX {
                next[k] += 1;
                slot = (offset + next[k] * skip) % m64;
            }
            slots[slot as usize] = order[k] as u32;
            next[k] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    slots
}

/// SipHash would do; FNV-1a with a seed and a final mix is enough here and has no
/// dependency. What matters is that it is fixed: every node must compute the same value.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV's low bits alone are poorly spread for short keys.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<BackendKey> {
        (0..n)
            .map(|i| BackendKey {
                address: IpAddr::from([10, 244, (i / 250) as u8, (i % 250) as u8 + 1]),
                port: 8080,
            })
            .collect()
    }

    fn counts(t: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &b in t {
            c[b as usize] += 1;
        }
        c
    }

    #[test]
    fn every_slot_is_filled_and_shares_differ_by_at_most_one() {
        for n in [1, 2, 3, 10, 100, 160] {
            let t = table(&backends(n), DEFAULT_TABLE_SIZE);
            assert_eq!(t.len(), DEFAULT_TABLE_SIZE as usize);
            let c = counts(&t, n);
            let (lo, hi) = (
                c.iter().min().copied().unwrap_or(0),
                c.iter().max().copied().unwrap_or(0),
            );
            assert!(hi - lo <= 1, "n={n}: shares {lo}..{hi}");
        }
    }

    #[test]
    fn the_table_ignores_arrival_order() {
        let b = backends(25);
        let mut shuffled = b.clone();
        shuffled.reverse();
        shuffled.swap(3, 17);
        let by_key =
            |bs: &[BackendKey], t: Vec<u32>| -> Vec<BackendKey> { t.into_iter().map(|i| bs[i as usize]).collect() };
        assert_eq!(by_key(&b, table(&b, 251)), by_key(&shuffled, table(&shuffled, 251)));
    }

    /// Removing one of N backends reassigns its own slots and only a few others: the
    /// paper's property that makes Maglev "consistent". With M=16381 and N=100, at most 2%
    /// of the other backends' slots move.
    #[test]
    fn removing_a_backend_moves_few_other_flows() {
        let b = backends(100);
        let before: Vec<BackendKey> = table(&b, DEFAULT_TABLE_SIZE)
            .into_iter()
            .map(|i| b[i as usize])
            .collect();
        let gone = b[42];
        let rest: Vec<BackendKey> = b.iter().copied().filter(|k| *k != gone).collect();
        let after: Vec<BackendKey> = table(&rest, DEFAULT_TABLE_SIZE)
            .into_iter()
            .map(|i| rest[i as usize])
            .collect();
        let others = before.iter().filter(|k| **k != gone).count();
        let moved = before.iter().zip(&after).filter(|(x, y)| **x != gone && x != y).count();
        assert!(
            (moved as f64) < 0.02 * others as f64,
            "{moved} of {others} slots of remaining backends moved"
        );
        assert!(after.iter().all(|k| *k != gone));
    }

    #[test]
    fn sizes_must_be_prime_and_in_range() {
        assert_eq!(validate_table_size(DEFAULT_TABLE_SIZE), Ok(DEFAULT_TABLE_SIZE));
        assert_eq!(validate_table_size(MAX_TABLE_SIZE), Ok(MAX_TABLE_SIZE));
        assert_eq!(validate_table_size(16384), Err(MaglevError::NotPrime(16384)));
        assert_eq!(validate_table_size(7), Err(MaglevError::OutOfRange(7)));
        assert!(validate_table_size(16384).unwrap_err().to_string().contains("prime"));
    }

    #[test]
    fn no_backends_no_table() {
        assert!(table(&[], DEFAULT_TABLE_SIZE).is_empty());
    }
}
