use serde_json::json;

use super::*;

fn pem_request(cn: &str, orgs: &[&str]) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    for o in orgs {
        params.distinguished_name.push(rcgen::DnType::OrganizationName, *o);
    }
    let pem = params.serialize_request(&key).expect("request").pem().expect("pem");
    base64::engine::general_purpose::STANDARD.encode(pem)
}

fn csr(request: &str) -> Value {
    json!({"metadata": {"name": "c"}, "spec": {"request": request, "signerName": KUBE_APISERVER_CLIENT, "usages": ["client auth"]}})
}

fn fields(obj: &Value, old: Option<&Value>) -> Vec<String> {
    let mut causes = Vec::new();
    validate(obj, old, &mut causes);
    causes.into_iter().map(|c| c.field).collect()
}

#[test]
fn a_good_request_validates_and_a_bad_one_names_spec_request() {
    assert!(fields(&csr(&pem_request("alice", &[])), None).is_empty());
    let junk = base64::engine::general_purpose::STANDARD.encode("not a csr");
    assert_eq!(fields(&csr(&junk), None), vec!["spec.request"]);
    let mut bad = csr(&pem_request("alice", &[]));
    bad["spec"]["usages"] = json!(["client auth", "flying"]);
    bad["spec"]["expirationSeconds"] = json!(599);
    bad["spec"]["signerName"] = json!("nodomain");
    assert_eq!(
        fields(&bad, None),
        vec!["spec.signerName", "spec.usages[1]", "spec.expirationSeconds"]
    );
}

#[test]
fn approval_writes_only_conditions_and_status_writes_keep_approval() {
    let old = csr(&pem_request("alice", &[]));
    let mut new = old.clone();
    new["spec"]["signerName"] = json!("example.com/x");
    new["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}], "certificate": "Zm9v"});
    prepare_update(&old, &mut new, Some("approval"));
    assert_eq!(new["spec"], old["spec"]);
    assert_eq!(new["status"]["conditions"][0]["type"], "Approved");
    assert!(new["status"]["conditions"][0]["lastUpdateTime"].is_string());
    assert!(new["status"].get("certificate").is_none());

    let approved = new.clone();
    let mut signed = approved.clone();
    signed["status"] = json!({"conditions": [{"type": "Failed", "status": "True"}], "certificate": "Zm9v"});
    prepare_update(&approved, &mut signed, Some("status"));
    let types: Vec<&str> = signed["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, vec!["Approved", "Failed"]);
    assert_eq!(signed["status"]["certificate"], "Zm9v");
}

#[test]
fn conditions_are_exclusive_and_never_removed() {
    let mut both = csr(&pem_request("alice", &[]));
    both["status"] =
        json!({"conditions": [{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]});
    assert_eq!(fields(&both, Some(&both)), vec!["status.conditions"]);
    let mut approved = csr(&pem_request("alice", &[]));
    approved["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
    let cleared = csr(&pem_request("alice", &[]));
    assert_eq!(fields(&cleared, Some(&approved)), vec!["status.conditions"]);
}
