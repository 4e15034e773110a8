//! Key-range arithmetic both backends share: where a page starts, where a prefix ends.

use std::ops::Bound;

use super::StoreError;

/// etcd rejects empty keys, and so do we, so both backends agree.
pub(crate) fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey {
            key: key.to_owned(),
            reason: "key is empty",
        });
    }
    Ok(())
}

/// The lower bound of a page of keys under `prefix`: after `start_after` when that lies
/// at or beyond the prefix, else the prefix itself.
pub(crate) fn page_start<'a>(prefix: &'a str, start_after: Option<&'a str>) -> Bound<&'a str> {
    match start_after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    }
}

/// etcd's "range end" for a prefix: the smallest key greater than every key starting with
/// it (the last byte below 0xff incremented, the rest cut off). An empty result means "no
/// end", which etcd spells `"\0"`.
pub(crate) fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// `Some(0)` means "no limit", as etcd's `limit: 0` does.
pub(crate) fn effective_limit(limit: Option<usize>) -> Option<usize> {
    limit.filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_increments_last_byte() {
        assert_eq!(prefix_range_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_range_end(b"a"), b"b".to_vec());
    }

    #[test]
    fn range_end_skips_trailing_ff() {
        assert_eq!(prefix_range_end(&[b'a', 0xff, 0xff]), vec![b'b']);
        assert_eq!(prefix_range_end(&[0xff]), Vec::<u8>::new());
        assert_eq!(prefix_range_end(b""), Vec::<u8>::new());
    }

    #[test]
    fn page_starts_after_the_last_key_only_inside_the_prefix() {
        assert_eq!(page_start("a/", None), Bound::Included("a/"));
        assert_eq!(page_start("a/", Some("a/x")), Bound::Excluded("a/x"));
        // A start_after before the prefix must not widen the range.
        assert_eq!(page_start("b/", Some("a/x")), Bound::Included("b/"));
    }

    #[test]
    fn zero_limit_is_unlimited() {
        assert_eq!(effective_limit(Some(0)), None);
        assert_eq!(effective_limit(Some(3)), Some(3));
        assert_eq!(effective_limit(None), None);
    }

    #[test]
    fn empty_key_is_invalid() {
        assert!(matches!(validate_key(""), Err(StoreError::InvalidKey { .. })));
        assert!(validate_key("/registry/pods/a").is_ok());
    }
}
