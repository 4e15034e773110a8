//! Bootstrap tokens (`<id>.<secret>`), as kubeadm makes them for TLS bootstrapping: a Secret
//! of type `bootstrap.kubernetes.io/token` named `bootstrap-token-<id>` in `kube-system`
//! authenticates the token as `system:bootstrap:<id>` in `system:bootstrappers` plus its
//! `auth-extra-groups`, while unexpired and marked `usage-bootstrap-authentication: true`.

use base64::Engine as _;
use serde_json::Value;
use subtle::ConstantTimeEq as _;

use crate::apiserver::{authn::UserInfo, registry::Registry, resources};

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const SECRET_PREFIX: &str = "bootstrap-token-";
pub const USER_PREFIX: &str = "system:bootstrap:";
pub const GROUP: &str = "system:bootstrappers";

/// `(id, secret)` when `token` has the bootstrap token form `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The bearer token of an `Authorization` header, if it looks like a bootstrap token.
pub fn from_header(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && split(token).is_some()).then_some(token)
}

/// The user a bootstrap token authenticates as, or why it does not (for the log; the
/// client only sees 401).
pub async fn authenticate(registry: &Registry, token: &str, now_unix: i64) -> Result<UserInfo, String> {
    let (id, secret) = split(token).ok_or("not a bootstrap token")?;
    let secrets = resources::find("", "v1", "secrets").ok_or("secrets are not served")?;
    let name = format!("{SECRET_PREFIX}{id}");
    let stored = registry
        .get(secrets, Some("kube-system"), &name)
        .await
        .map_err(|e| format!("kube-system/{name}: {}", e.message))?;
    user_for(&stored, id, secret, now_unix)
}

/// The pure part of [`authenticate`]: what the Secret says about the token.
pub fn user_for(secret_obj: &Value, id: &str, secret: &str, now_unix: i64) -> Result<UserInfo, String> {
    if secret_obj["type"] != SECRET_TYPE {
        return Err(format!("secret type is not {SECRET_TYPE}"));
    }
    if secret_obj["metadata"]["deletionTimestamp"].is_string() {
        return Err("the token's secret is being deleted".into());
    }
    let field = |key: &str| -> Option<String> {
        let raw = secret_obj["data"][key].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
        String::from_utf8(bytes).ok()
    };
    if field("token-id").as_deref() != Some(id) {
        return Err("token-id does not match the secret's name".into());
    }
    let stored = field("token-secret").unwrap_or_default();
    if !bool::from(stored.as_bytes().ct_eq(secret.as_bytes())) {
        return Err("token-secret does not match".into());
    }
    if let Some(exp) = field("expiration") {
        let at = exp
            .parse::<jiff::Timestamp>()
            .map_err(|_| format!("expiration {exp:?} is not RFC 3339"))?;
        if at.as_second() <= now_unix {
            return Err(format!("token expired at {exp}"));
        }
    }
    if field("usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err("usage-bootstrap-authentication is not \"true\"".into());
    }
    let mut groups = vec![GROUP.to_owned()];
    for g in field("auth-extra-groups").unwrap_or_default().split(',') {
        let g = g.trim();
        if g.is_empty() {
            continue;
        }
        if !g.starts_with("system:bootstrappers:") {
            return Err(format!(
                "auth-extra-groups {g:?} does not start with system:bootstrappers:"
            ));
        }
        groups.push(g.to_owned());
    }
    Ok(UserInfo::authenticated(format!("{USER_PREFIX}{id}"), "", groups))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(fields: &[(&str, &str)]) -> Value {
        let data: serde_json::Map<String, Value> = fields
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect();
        json!({"type": SECRET_TYPE, "metadata": {"name": "bootstrap-token-abcdef"}, "data": data})
    }

    #[test]
    fn only_the_right_form_is_a_bootstrap_token() {
        assert_eq!(split("abcdef.0123456789abcdef"), Some(("abcdef", "0123456789abcdef")));
        assert_eq!(split("ABCDEF.0123456789abcdef"), None);
        assert_eq!(split("abcdef.0123456789abcde"), None);
        assert_eq!(split("eyJhbGciOi.x.y"), None);
        assert_eq!(
            from_header(Some("Bearer abcdef.0123456789abcdef")),
            Some("abcdef.0123456789abcdef")
        );
        assert_eq!(from_header(Some("Basic abcdef.0123456789abcdef")), None);
    }

    #[test]
    fn secrets_decide_user_groups_and_expiry() {
        let base = [
            ("token-id", "abcdef"),
            ("token-secret", "0123456789abcdef"),
            ("usage-bootstrap-authentication", "true"),
            ("auth-extra-groups", "system:bootstrappers:kubeadm:default-node-token"),
            ("expiration", "2030-01-01T00:00:00Z"),
        ];
        let now = 1_800_000_000; // 2027
        let user = user_for(&secret(&base), "abcdef", "0123456789abcdef", now).expect("valid");
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert!(user.in_group("system:bootstrappers"));
        assert!(user.in_group("system:bootstrappers:kubeadm:default-node-token"));
        assert!(user.in_group("system:authenticated"));
        assert!(user_for(&secret(&base), "abcdef", "0123456789abcdee", now).is_err());
        let expired = user_for(&secret(&base), "abcdef", "0123456789abcdef", 1_900_000_000);
        assert!(expired.expect_err("expired").contains("expired"));
        let mut no_usage = base.to_vec();
        no_usage.retain(|(k, _)| *k != "usage-bootstrap-authentication");
        assert!(user_for(&secret(&no_usage), "abcdef", "0123456789abcdef", now).is_err());
        let mut bad_group = base.to_vec();
        bad_group[3] = ("auth-extra-groups", "system:masters");
        assert!(user_for(&secret(&bad_group), "abcdef", "0123456789abcdef", now).is_err());
    }
}
