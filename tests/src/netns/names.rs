//! Namespace names: unique per cluster, recognisable as ours, and traceable to the process
//! that created them so stale ones can be reaped.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use super::HarnessError;

const PREFIX: &str = "rdr";
const NETNS_DIR: &str = "/run/netns";

/// Where `ip netns add` bind-mounts a namespace; opening it is how one enters the namespace.
pub fn netns_path(netns: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(netns)
}

pub(crate) fn netns_dir() -> &'static str {
    NETNS_DIR
}

/// `rdr-<pid>-<counter>`: the pid separates test processes, the counter clusters within one.
pub(crate) fn new_cluster_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}-{}-{n}", std::process::id())
}

/// The pid that created `netns`, if the name is one of ours.
pub(crate) fn owner_pid(netns: &str) -> Option<u32> {
    let mut parts = netns.splitn(4, '-');
    if parts.next()? != PREFIX {
        return None;
    }
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    parts.next().filter(|rest| !rest.is_empty())?;
    Some(pid)
}

/// Pod names become part of a netns name and of the echo server's name, so keep them plain.
pub(crate) fn check_pod_name(name: &str) -> Result<(), HarnessError> {
    let reason = if name.is_empty() || name.len() > 20 {
        Some("must be 1 to 20 characters".to_owned())
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may only contain a-z, 0-9 and '-'".to_owned())
    } else if name.starts_with('-') {
        Some("must not start with '-'".to_owned())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(HarnessError::InvalidName {
            what: "pod name",
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_recognises_only_our_names() {
        assert_eq!(owner_pid("rdr-4242-3-n1"), Some(4242));
        assert_eq!(owner_pid("rdr-4242-3-my-pod"), Some(4242));
        assert_eq!(owner_pid("rdr-4242-3-"), None);
        assert_eq!(owner_pid("rdr-x-3-n1"), None);
        assert_eq!(owner_pid("cni-4242-3-n1"), None);
        assert_eq!(owner_pid("rdr-4242"), None);
    }

    #[test]
    fn pod_names_are_checked() {
        assert!(check_pod_name("p1").is_ok());
        assert!(check_pod_name("web-0").is_ok());
        for bad in ["", "-x", "P1", "a b", "a/b", "abcdefghijklmnopqrstu"] {
            assert!(check_pod_name(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
