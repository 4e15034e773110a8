//! SubjectAccessReview (`authorization.k8s.io/v1`): may this other user do that? The CSR
//! approver asks it for each requestor, as upstream's does. The review is decided by the
//! same authorizer as real requests; asking needs `create` on `subjectaccessreviews`.

use serde_json::{Value, json};

use crate::apiserver::{
    App,
    authn::{SYSTEM_MASTERS, UserInfo},
    rbac::Attributes,
    status::{ApiError, Cause},
};

pub const PATH: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

pub async fn subject_access_review(app: &App, asker: &UserInfo, review: &Value) -> Result<Value, ApiError> {
    let attrs = Attributes {
        verb: "create",
        group: "authorization.k8s.io",
        resource: "subjectaccessreviews".into(),
        namespace: None,
        name: None,
    };
    if !asker.in_group(SYSTEM_MASTERS) && !app.authz.rbac.allows(asker, &attrs).await {
        return Err(ApiError::forbidden(format!(
            "subjectaccessreviews.authorization.k8s.io is forbidden: User \"{}\" cannot create resource \"subjectaccessreviews\" in API group \"authorization.k8s.io\" at the cluster scope",
            asker.name
        )));
    }
    let spec = &review["spec"];
    let name = spec["user"].as_str().unwrap_or_default();
    let groups: Vec<String> = spec["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if name.is_empty() && groups.is_empty() {
        return Err(ApiError::invalid(
            "SubjectAccessReview",
            "authorization.k8s.io",
            "",
            vec![Cause::invalid(
                "spec.user",
                "Invalid value: \"\": at least one of user or group must be specified",
            )],
        ));
    }
    // The review's groups are taken as given, as upstream does (no implicit groups).
    let subject = UserInfo {
        name: name.to_owned(),
        uid: spec["uid"].as_str().unwrap_or_default().to_owned(),
        groups,
    };
    let mut answer = app
        .authz
        .self_subject_access_review(&subject, review, &app.registry)
        .await?;
    answer["kind"] = json!("SubjectAccessReview");
    Ok(answer)
}
