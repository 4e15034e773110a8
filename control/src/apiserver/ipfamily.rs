//! Dual-stack Service defaulting: which IP families a Service gets, in which order, and
//! which ClusterIP the user asked for in each, following kube-apiserver's Service REST
//! (`ipFamilyPolicy`, `ipFamilies`, `clusterIPs`). Pure, so the allocating registry stays
//! small and the rules get fast tests.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::{
    allocator::family_name,
    status::{ApiError, Cause},
};

const POLICIES: [&str; 3] = ["SingleStack", "PreferDualStack", "RequireDualStack"];

/// One family a Service gets: which of the cluster's ranges, and the address asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub cidr: IpNet,
    pub requested: Option<IpAddr>,
    /// The field an allocation error names.
    pub field: String,
}

fn family_of(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

fn refuse(cause: Cause) -> ApiError {
    ApiError::invalid("Service", "", "", vec![cause])
}

/// The families (primary first) and requested addresses of `spec` on a cluster with
/// `cidrs` (primary first). A headless Service gets families too, just no addresses.
pub fn resolve(spec: &Value, cidrs: &[IpNet]) -> Result<Vec<Family>, ApiError> {
    let policy = spec["ipFamilyPolicy"].as_str().unwrap_or("SingleStack");
    if !POLICIES.contains(&policy) {
        return Err(refuse(Cause::not_supported(
            "spec.ipFamilyPolicy",
            format!(
                "Unsupported value: {policy:?}: supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""
            ),
        )));
    }
    let dual_cluster = cidrs.len() > 1;
    if policy == "RequireDualStack" && !dual_cluster {
        return Err(refuse(Cause::invalid(
            "spec.ipFamilyPolicy",
            "Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
        )));
    }
    let headless = spec["clusterIP"] == "None";
    let cluster_ip = spec["clusterIP"].as_str().filter(|s| !s.is_empty());
    let mut given: Vec<(String, String)> = spec["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, v)| {
            (
                format!("spec.clusterIPs[{i}]"),
                v.as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    match (cluster_ip, given.first()) {
        (Some(ip), None) => given.push(("spec.clusterIP".into(), ip.to_owned())),
        (Some(ip), Some((_, first))) if ip != first => {
            return Err(refuse(Cause::invalid(
                "spec.clusterIPs[0]",
                format!("Invalid value: {first:?}: must be same as spec.clusterIP ({ip:?})"),
            )));
        }
        _ => {}
    }
    if given.len() > 2 {
        return Err(refuse(Cause::invalid(
            "spec.clusterIPs",
            "may only hold up to 2 values (one per IP family)",
        )));
    }
    let mut requested: Vec<(String, IpAddr)> = Vec::new();
    if !headless {
        for (field, s) in &given {
            let ip: IpAddr = s.parse().map_err(|_| {
                refuse(Cause::invalid(
                    field.as_str(),
                    format!("Invalid value: {s:?}: must be a valid IP address"),
                ))
            })?;
            requested.push((field.clone(), ip));
        }
    }
    let mut families: Vec<String> = Vec::new();
    for (i, f) in spec["ipFamilies"].as_array().into_iter().flatten().enumerate() {
        let field = format!("spec.ipFamilies[{i}]");
        let name = f.as_str().unwrap_or_default();
        if !["IPv4", "IPv6"].contains(&name) {
            return Err(refuse(Cause::not_supported(
                field,
                format!("Unsupported value: {f}: supported values: \"IPv4\", \"IPv6\""),
            )));
        }
        if families.iter().any(|have| have == name) {
            return Err(refuse(Cause::duplicate(field, format!("Duplicate value: {f}"))));
        }
        families.push(name.to_owned());
    }
    for (i, (field, ip)) in requested.iter().enumerate() {
        let fam = family_of(ip);
        match families.get(i) {
            Some(want) if want != fam => {
                return Err(refuse(Cause::invalid(
                    field.as_str(),
                    format!("Invalid value: \"{ip}\": expected an {want} address (as spec.ipFamilies[{i}])"),
                )));
            }
            Some(_) => {}
            None if families.iter().any(|f| f == fam) => {
                return Err(refuse(Cause::invalid(
                    field.as_str(),
                    format!("Invalid value: \"{ip}\": may not hold two addresses of one IP family"),
                )));
            }
            None => families.push(fam.to_owned()),
        }
    }
    if families.is_empty() {
        families.push(family_name(&cidrs[0]).to_owned());
    }
    if policy != "SingleStack" && dual_cluster && families.len() == 1 {
        let other = cidrs.iter().map(family_name).find(|f| *f != families[0]);
        families.extend(other.map(str::to_owned));
    }
    if policy == "SingleStack" && families.len() > 1 {
        return Err(refuse(Cause::invalid(
            "spec.ipFamilyPolicy",
            "Invalid value: \"SingleStack\": must be RequireDualStack or PreferDualStack when multiple IP families are specified",
        )));
    }
    let ranges = cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    families
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let req = requested.get(i);
            let Some(cidr) = cidrs.iter().find(|c| family_name(c) == name) else {
                return Err(refuse(match req {
                    // The address decided the family: name the address, as a single-stack
                    // cluster always did.
                    Some((field, ip)) => Cause::invalid(
                        field.as_str(),
                        format!(
                            "Invalid value: \"{ip}\": provided IP is not in the valid range. The range of valid IPs is {ranges}"
                        ),
                    ),
                    None => Cause::not_supported(
                        format!("spec.ipFamilies[{i}]"),
                        format!("Unsupported value: {name:?}: this cluster has no {name} service range ({ranges})"),
                    ),
                }));
            };
            Ok(Family {
                cidr: *cidr,
                requested: req.map(|(_, ip)| *ip),
                field: req.map_or_else(|| format!("spec.clusterIPs[{i}]"), |(f, _)| f.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn v4() -> IpNet {
        "10.96.0.0/16".parse().unwrap()
    }
    fn v6() -> IpNet {
        "fd00:10:96::/112".parse().unwrap()
    }
    fn names(r: &[Family]) -> Vec<&'static str> {
        r.iter().map(|f| family_name(&f.cidr)).collect()
    }
    fn field_of(e: &ApiError) -> String {
        e.details.as_ref().map(|d| format!("{d:?}")).unwrap_or_default()
    }

    #[test]
    fn single_stack_defaults_to_the_primary_family() {
        let r = resolve(&json!({"ipFamilyPolicy": "SingleStack"}), &[v6(), v4()]).unwrap();
        assert_eq!(names(&r), ["IPv6"]);
        let r = resolve(&json!({}), &[v4()]).unwrap();
        assert_eq!(names(&r), ["IPv4"]);
    }

    #[test]
    fn dual_stack_policies_add_the_second_family_only_on_a_dual_stack_cluster() {
        let r = resolve(&json!({"ipFamilyPolicy": "PreferDualStack"}), &[v4(), v6()]).unwrap();
        assert_eq!(names(&r), ["IPv4", "IPv6"]);
        let r = resolve(&json!({"ipFamilyPolicy": "PreferDualStack"}), &[v4()]).unwrap();
        assert_eq!(names(&r), ["IPv4"]);
        let r = resolve(
            &json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]}),
            &[v4(), v6()],
        )
        .unwrap();
        assert_eq!(names(&r), ["IPv6", "IPv4"]);
        let e = resolve(&json!({"ipFamilyPolicy": "RequireDualStack"}), &[v4()]).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(field_of(&e).contains("spec.ipFamilyPolicy"), "{e:?}");
    }

    #[test]
    fn families_are_checked() {
        let dual = [v4(), v6()];
        let e = resolve(
            &json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv4"]}),
            &dual,
        )
        .unwrap_err();
        assert!(field_of(&e).contains("spec.ipFamilies[1]"), "{e:?}");
        let e = resolve(&json!({"ipFamilies": ["IPv5"]}), &dual).unwrap_err();
        assert!(field_of(&e).contains("spec.ipFamilies[0]"), "{e:?}");
        let e = resolve(&json!({"ipFamilies": ["IPv6"]}), &[v4()]).unwrap_err();
        assert!(field_of(&e).contains("spec.ipFamilies[0]"), "{e:?}");
        let e = resolve(&json!({"ipFamilies": ["IPv4", "IPv6"]}), &dual).unwrap_err();
        assert!(field_of(&e).contains("spec.ipFamilyPolicy"), "{e:?}");
        let e = resolve(&json!({"ipFamilyPolicy": "Sometimes"}), &dual).unwrap_err();
        assert!(field_of(&e).contains("spec.ipFamilyPolicy"), "{e:?}");
    }

    #[test]
    fn requested_addresses_pick_their_family() {
        let dual = [v4(), v6()];
        let r = resolve(
            &json!({"ipFamilyPolicy": "PreferDualStack", "clusterIP": "fd00:10:96::20"}),
            &dual,
        )
        .unwrap();
        assert_eq!(names(&r), ["IPv6", "IPv4"]);
        assert_eq!(r[0].requested, Some("fd00:10:96::20".parse().unwrap()));
        assert_eq!(r[1].requested, None);
        let r = resolve(
            &json!({"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["10.96.0.9", "fd00:10:96::9"]}),
            &dual,
        )
        .unwrap();
        assert_eq!(r[1].requested, Some("fd00:10:96::9".parse().unwrap()));
        assert_eq!(r[1].field, "spec.clusterIPs[1]");
        let e = resolve(&json!({"clusterIP": "10.96.0.9"}), &[v6()]).unwrap_err();
        assert!(field_of(&e).contains("spec.clusterIP\""), "{e:?}");
        let e = resolve(
            &json!({"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["10.96.0.9", "10.96.0.10"]}),
            &dual,
        )
        .unwrap_err();
        assert!(field_of(&e).contains("spec.clusterIPs[1]"), "{e:?}");
    }

    #[test]
    fn headless_services_get_families_but_no_addresses() {
        let r = resolve(
            &json!({"clusterIP": "None", "clusterIPs": ["None"], "ipFamilyPolicy": "PreferDualStack"}),
            &[v4(), v6()],
        )
        .unwrap();
        assert_eq!(names(&r), ["IPv4", "IPv6"]);
        assert!(r.iter().all(|f| f.requested.is_none()));
    }
}
