//! The Pod Security Standards' checks (baseline and restricted), pure: a pod's metadata and
//! spec in, the failed checks out, each with upstream's reason and detail text, in
//! upstream's order (baseline checks, then restricted ones, each level by check id).
//! Versions are not modelled: every policy version is checked as "latest" is.

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "privileged" => Some(Self::Privileged),
            "baseline" => Some(Self::Baseline),
            "restricted" => Some(Self::Restricted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// One failed check: `reason (detail)` in a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{} ({})", self.reason, self.detail)
        }
    }
}

fn violation(reason: impl Into<String>, detail: impl Into<String>) -> Option<Violation> {
    Some(Violation {
        reason: reason.into(),
        detail: detail.into(),
    })
}

fn pluralize<'a>(one: &'a str, many: &'a str, n: usize) -> &'a str {
    if n == 1 { one } else { many }
}

fn join_quote<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    items
        .into_iter()
        .map(|s| format!("{:?}", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

/// Init, regular and ephemeral containers, in upstream's visiting order.
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |f| spec[f].as_array().into_iter().flatten())
}

fn name(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_owned()
}

fn names_where(spec: &Value, mut bad: impl FnMut(&Value) -> bool) -> Vec<String> {
    containers(spec).filter(|c| bad(c)).map(name).collect()
}

/// Pods in their own user namespace (`hostUsers: false`) are let off the checks whose
/// risk the namespace removes, as upstream does.
fn user_namespaced(spec: &Value) -> bool {
    spec["hostUsers"] == false
}

fn windows(spec: &Value) -> bool {
    spec["os"]["name"] == "windows"
}

/// The checks of `level`, failed ones only.
pub fn check(level: Level, metadata: &Value, spec: &Value) -> Vec<Violation> {
    if level == Level::Privileged {
        return vec![];
    }
    let mut out: Vec<Option<Violation>> = vec![
        app_armor(metadata, spec),
        if level == Level::Baseline {
            capabilities_baseline(spec)
        } else {
            None
        },
        host_namespaces(spec),
        if level == Level::Baseline {
            host_path_volumes(spec)
        } else {
            None
        },
        host_ports(spec),
        host_process(spec),
        privileged(spec),
        proc_mount(spec),
        se_linux_options(spec),
        if level == Level::Baseline {
            seccomp_baseline(spec)
        } else {
            None
        },
        sysctls(spec),
    ];
    if level == Level::Restricted {
        out.extend([
            allow_privilege_escalation(spec),
            capabilities_restricted(spec),
            restricted_volumes(spec),
            run_as_non_root(spec),
            run_as_user(spec),
            seccomp_restricted(spec),
        ]);
    }
    out.into_iter().flatten().collect()
}

fn app_armor(metadata: &Value, spec: &Value) -> Option<Violation> {
    let bad_type = |sc: &Value| {
        sc["appArmorProfile"]["type"]
            .as_str()
            .filter(|t| !matches!(*t, "RuntimeDefault" | "Localhost"))
            .map(str::to_owned)
    };
    let mut setters = Vec::new();
    let mut values = BTreeSet::new();
    if let Some(t) = bad_type(&spec["securityContext"]) {
        setters.push("pod".to_owned());
        values.insert(format!("{t:?}"));
    }
    let mut bad = Vec::new();
    for c in containers(spec) {
        if let Some(t) = bad_type(&c["securityContext"]) {
            bad.push(name(c));
            values.insert(format!("{t:?}"));
        }
    }
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    let mut annotations: Vec<String> = metadata["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("container.apparmor.security.beta.kubernetes.io/"))
        .filter_map(|(k, v)| {
            let v = v.as_str().unwrap_or_default();
            (v != "runtime/default" && !v.starts_with("localhost/")).then(|| format!("{k}={v:?}"))
        })
        .collect();
    annotations.sort();
    if !annotations.is_empty() {
        setters.push(pluralize("annotation", "annotations", annotations.len()).to_owned());
    }
    if setters.is_empty() {
        return None;
    }
    let n = values.len() + annotations.len();
    let all: Vec<String> = values.into_iter().chain(annotations).collect();
    violation(
        pluralize("forbidden AppArmor profile", "forbidden AppArmor profiles", n),
        format!(
            "{} must not set AppArmor profile type to {}",
            setters.join(" and "),
            all.join(", ")
        ),
    )
}

const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn added_capabilities(c: &Value) -> impl Iterator<Item = &str> {
    c["securityContext"]["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn capabilities_baseline(spec: &Value) -> Option<Violation> {
    let mut caps = BTreeSet::new();
    let bad = names_where(spec, |c| {
        let extra: Vec<&str> = added_capabilities(c)
            .filter(|a| !BASELINE_CAPABILITIES.contains(a))
            .collect();
        caps.extend(extra.iter().map(|s| (*s).to_owned()));
        !extra.is_empty()
    });
    if bad.is_empty() {
        return None;
    }
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad),
            join_quote(&caps)
        ),
    )
}

fn host_namespaces(spec: &Value) -> Option<Violation> {
    let set: Vec<&str> = ["hostIPC", "hostNetwork", "hostPID"]
        .into_iter()
        .filter(|f| spec[*f] == true)
        .collect();
    if set.is_empty() {
        return None;
    }
    violation(
        "host namespaces",
        set.iter().map(|f| format!("{f}=true")).collect::<Vec<_>>().join(", "),
    )
}

fn volumes(spec: &Value) -> impl Iterator<Item = &Value> {
    spec["volumes"].as_array().into_iter().flatten()
}

fn host_path_volumes(spec: &Value) -> Option<Violation> {
    let bad: Vec<String> = volumes(spec)
        .filter(|v| v.get("hostPath").is_some())
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!("{} {}", pluralize("volume", "volumes", bad.len()), join_quote(&bad)),
    )
}

fn host_ports(spec: &Value) -> Option<Violation> {
    let mut ports = BTreeSet::new();
    let bad = names_where(spec, |c| {
        let used: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["hostPort"].as_i64().filter(|p| *p != 0))
            .map(|p| p.to_string())
            .collect();
        ports.extend(used.iter().cloned());
        !used.is_empty()
    });
    if bad.is_empty() {
        return None;
    }
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

fn host_process(spec: &Value) -> Option<Violation> {
    let set = |sc: &Value| sc["windowsOptions"]["hostProcess"] == true;
    let mut setters = Vec::new();
    if set(&spec["securityContext"]) {
        setters.push("pod".to_owned());
    }
    let bad = names_where(spec, |c| set(&c["securityContext"]));
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters.join(" and ")
        ),
    )
}

fn privileged(spec: &Value) -> Option<Violation> {
    let bad = names_where(spec, |c| c["securityContext"]["privileged"] == true);
    if bad.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            containers_phrase(&bad)
        ),
    )
}

fn proc_mount(spec: &Value) -> Option<Violation> {
    if user_namespaced(spec) {
        return None;
    }
    let mut kinds = BTreeSet::new();
    let bad = names_where(spec, |c| match c["securityContext"]["procMount"].as_str() {
        Some(m) if m != "Default" => {
            kinds.insert(m.to_owned());
            true
        }
        _ => false,
    });
    if bad.is_empty() {
        return None;
    }
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad),
            join_quote(&kinds)
        ),
    )
}

fn se_linux_options(spec: &Value) -> Option<Violation> {
    const TYPES: &[&str] = &[
        "",
        "container_t",
        "container_init_t",
        "container_kvm_t",
        "container_engine_t",
    ];
    let mut types = BTreeSet::new();
    let (mut user, mut role) = (false, false);
    let mut inspect = |sc: &Value| {
        let o = &sc["seLinuxOptions"];
        let mut bad = false;
        if let Some(t) = o["type"].as_str().filter(|t| !TYPES.contains(t)) {
            types.insert(t.to_owned());
            bad = true;
        }
        if o["user"].as_str().is_some_and(|u| !u.is_empty()) {
            user = true;
            bad = true;
        }
        if o["role"].as_str().is_some_and(|r| !r.is_empty()) {
            role = true;
            bad = true;
        }
        bad
    };
    let mut setters = Vec::new();
    if inspect(&spec["securityContext"]) {
        setters.push("pod".to_owned());
    }
    let bad: Vec<String> = containers(spec)
        .filter(|c| inspect(&c["securityContext"]))
        .map(name)
        .collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !types.is_empty() {
        data.push(format!(
            "{} {}",
            pluralize("type", "types", types.len()),
            join_quote(&types)
        ));
    }
    if user {
        data.push("user may not be set".to_owned());
    }
    if role {
        data.push("role may not be set".to_owned());
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            data.join("; ")
        ),
    )
}

fn seccomp_type(sc: &Value) -> Option<&str> {
    sc["seccompProfile"]["type"].as_str()
}

fn seccomp_baseline(spec: &Value) -> Option<Violation> {
    let mut setters = Vec::new();
    if seccomp_type(&spec["securityContext"]) == Some("Unconfined") {
        setters.push("pod".to_owned());
    }
    let bad = names_where(spec, |c| seccomp_type(&c["securityContext"]) == Some("Unconfined"));
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
            setters.join(" and ")
        ),
    )
}

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

fn sysctls(spec: &Value) -> Option<Violation> {
    let bad: Vec<&str> = spec["securityContext"]["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation("forbidden sysctls", bad.join(", "))
}

fn allow_privilege_escalation(spec: &Value) -> Option<Violation> {
    if windows(spec) {
        return None;
    }
    let bad = names_where(spec, |c| c["securityContext"]["allowPrivilegeEscalation"] != false);
    if bad.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&bad)
        ),
    )
}

fn capabilities_restricted(spec: &Value) -> Option<Violation> {
    if windows(spec) {
        return None;
    }
    let missing_drop = names_where(spec, |c| {
        !c["securityContext"]["capabilities"]["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d == "ALL")
    });
    let mut caps = BTreeSet::new();
    let adding = names_where(spec, |c| {
        let extra: Vec<&str> = added_capabilities(c).filter(|a| *a != "NET_BIND_SERVICE").collect();
        caps.extend(extra.iter().map(|s| (*s).to_owned()));
        !extra.is_empty()
    });
    let mut details = Vec::new();
    if !missing_drop.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop)
        ));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(&caps)
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

/// Volume sources the restricted level allows.
const ALLOWED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn restricted_volumes(spec: &Value) -> Option<Violation> {
    let mut types = BTreeSet::new();
    let mut bad = Vec::new();
    for v in volumes(spec) {
        let source = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .find(|k| *k != "name");
        match source {
            Some(s) if ALLOWED_VOLUMES.contains(&s) => {}
            // A volume without a source is an emptyDir after defaulting.
            None => {}
            Some(s) => {
                types.insert(s.to_owned());
                bad.push(name(v));
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", bad.len()),
            join_quote(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("restricted volume type", "restricted volume types", types.len()),
            join_quote(&types)
        ),
    )
}

fn run_as_non_root(spec: &Value) -> Option<Violation> {
    if user_namespaced(spec) {
        return None;
    }
    let pod = &spec["securityContext"]["runAsNonRoot"];
    let mut setters = Vec::new();
    if *pod == false {
        setters.push("pod".to_owned());
    }
    let pod_ok = *pod == true;
    let explicit = names_where(spec, |c| c["securityContext"]["runAsNonRoot"] == false);
    let implicit = names_where(spec, |c| !pod_ok && !c["securityContext"]["runAsNonRoot"].is_boolean());
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            ),
        );
    }
    if implicit.is_empty() {
        return None;
    }
    violation(
        "runAsNonRoot != true",
        format!(
            "pod or {} must set securityContext.runAsNonRoot=true",
            containers_phrase(&implicit)
        ),
    )
}

fn run_as_user(spec: &Value) -> Option<Violation> {
    if user_namespaced(spec) {
        return None;
    }
    let mut setters = Vec::new();
    if spec["securityContext"]["runAsUser"] == 0 {
        setters.push("pod".to_owned());
    }
    let bad = names_where(spec, |c| c["securityContext"]["runAsUser"] == 0);
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", setters.join(" and ")),
    )
}

fn seccomp_restricted(spec: &Value) -> Option<Violation> {
    if windows(spec) {
        return None;
    }
    let valid = |t: &str| matches!(t, "RuntimeDefault" | "Localhost");
    let mut setters = Vec::new();
    let mut values = BTreeSet::new();
    let pod_type = seccomp_type(&spec["securityContext"]);
    match pod_type {
        Some(t) if !valid(t) => {
            setters.push("pod".to_owned());
            values.insert(t.to_owned());
        }
        _ => {}
    }
    let pod_ok = pod_type.is_some_and(valid);
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in containers(spec) {
        match seccomp_type(&c["securityContext"]) {
            Some(t) if !valid(t) => {
                explicit.push(name(c));
                values.insert(t.to_owned());
            }
            Some(_) => {}
            None if !pod_ok => implicit.push(name(c)),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters.join(" and "),
                join_quote(&values)
            ),
        );
    }
    if implicit.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_phrase(&implicit)
        ),
    )
}

/// `reason (detail), reason (detail)`: how a refusal or warning lists violations.
pub fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reasons(level: Level, spec: Value) -> Vec<String> {
        check(level, &json!({}), &spec)
            .into_iter()
            .map(|v| v.to_string())
            .collect()
    }

    fn restricted_container() -> Value {
        json!({"name": "c", "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"},
        }})
    }

    #[test]
    fn a_plain_pod_passes_baseline_and_fails_restricted_as_upstream_words_it() {
        let spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
        assert!(reasons(Level::Baseline, spec.clone()).is_empty());
        assert_eq!(
            describe(&check(Level::Restricted, &json!({}), &spec)),
            "allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), \
             unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), \
             runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), \
             seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        assert!(reasons(Level::Privileged, json!({"hostNetwork": true})).is_empty());
    }

    #[test]
    fn a_hardened_pod_passes_restricted() {
        let spec = json!({"containers": [restricted_container()], "volumes": [{"name": "d", "emptyDir": {}}]});
        assert_eq!(reasons(Level::Restricted, spec), Vec::<String>::new());
    }

    #[test]
    fn host_namespaces_and_ports() {
        let spec = json!({"hostNetwork": true, "hostPID": true, "containers": [
            {"name": "a", "ports": [{"containerPort": 80, "hostPort": 80}, {"containerPort": 81, "hostPort": 8081}]}]});
        assert_eq!(
            reasons(Level::Baseline, spec),
            vec![
                "host namespaces (hostNetwork=true, hostPID=true)",
                "hostPort (container \"a\" uses hostPorts 80, 8081)"
            ]
        );
    }

    #[test]
    fn privileged_and_capabilities() {
        let spec = json!({"containers": [
            {"name": "a", "securityContext": {"privileged": true}},
            {"name": "b", "securityContext": {"capabilities": {"add": ["NET_ADMIN", "CHOWN", "SYS_TIME"]}}},
        ]});
        assert_eq!(
            reasons(Level::Baseline, spec.clone()),
            vec![
                "non-default capabilities (container \"b\" must not include \"NET_ADMIN\", \"SYS_TIME\" in securityContext.capabilities.add)",
                "privileged (container \"a\" must not set securityContext.privileged=true)",
            ]
        );
        let restricted = reasons(Level::Restricted, spec);
        assert!(
            restricted.contains(&"unrestricted capabilities (containers \"a\", \"b\" must set securityContext.capabilities.drop=[\"ALL\"]; container \"b\" must not include \"CHOWN\", \"NET_ADMIN\", \"SYS_TIME\" in securityContext.capabilities.add)".to_owned()),
            "{restricted:?}"
        );
        assert!(
            !restricted.iter().any(|r| r.starts_with("non-default")),
            "overridden by restricted"
        );
    }

    #[test]
    fn host_path_volumes_at_both_levels() {
        let spec = json!({"containers": [restricted_container()], "volumes": [
            {"name": "h", "hostPath": {"path": "/"}}, {"name": "n", "nfs": {"server": "x", "path": "/"}}]});
        assert_eq!(
            reasons(Level::Baseline, spec.clone()),
            vec!["hostPath volumes (volume \"h\")"]
        );
        assert_eq!(
            reasons(Level::Restricted, spec),
            vec!["restricted volume types (volumes \"h\", \"n\" use restricted volume types \"hostPath\", \"nfs\")"]
        );
    }

    #[test]
    fn apparmor_selinux_seccomp_procmount_sysctls() {
        let meta = json!({"annotations": {"container.apparmor.security.beta.kubernetes.io/a": "unconfined"}});
        let spec = json!({
            "securityContext": {
                "seccompProfile": {"type": "Unconfined"},
                "seLinuxOptions": {"type": "spc_t"},
                "sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}],
            },
            "containers": [{"name": "a", "securityContext": {"procMount": "Unmasked", "appArmorProfile": {"type": "Unconfined"}, "seLinuxOptions": {"user": "root"}}}],
        });
        let got: Vec<String> = check(Level::Baseline, &meta, &spec)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            vec![
                "forbidden AppArmor profiles (container \"a\" and annotation must not set AppArmor profile type to \"Unconfined\", container.apparmor.security.beta.kubernetes.io/a=\"unconfined\")",
                "procMount (container \"a\" must not set securityContext.procMount to \"Unmasked\")",
                "seLinuxOptions (pod and container \"a\" set forbidden securityContext.seLinuxOptions: type \"spc_t\"; user may not be set)",
                "seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")",
                "forbidden sysctls (kernel.msgmax)",
            ]
        );
    }

    #[test]
    fn run_as_root_and_explicit_false() {
        let mut c = restricted_container();
        c["securityContext"]["runAsNonRoot"] = json!(false);
        c["securityContext"]["runAsUser"] = json!(0);
        let spec = json!({"securityContext": {"runAsNonRoot": true}, "containers": [c]});
        assert_eq!(
            reasons(Level::Restricted, spec),
            vec![
                "runAsNonRoot != true (container \"c\" must not set securityContext.runAsNonRoot=false)",
                "runAsUser=0 (container \"c\" must not set runAsUser=0)",
            ]
        );
        let pod_level = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]});
        assert!(
            reasons(Level::Restricted, pod_level).is_empty(),
            "pod-level settings cover containers"
        );
    }

    #[test]
    fn user_namespaces_relax_root_checks() {
        let spec = json!({"hostUsers": false, "containers": [{"name": "c", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}, "runAsUser": 0, "procMount": "Unmasked"}}]});
        assert!(reasons(Level::Restricted, spec).is_empty());
    }
}
