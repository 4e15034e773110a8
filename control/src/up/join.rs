//! Nodes join the local cluster as kubeadm's do: with a bootstrap token, through TLS
//! bootstrapping (the agent asks for its client certificate with a CSR, which the
//! controllers approve and sign), so every `rudder up` exercises the path a real node takes.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::PostParams};
use serde_json::json;

/// kubeadm's default token lifetime.
const TOKEN_TTL_HOURS: i64 = 24;

fn random_token_part(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Creates a bootstrap token (`kube-system/bootstrap-token-<id>`, what `kubeadm token
/// create` writes) and returns it as `<id>.<secret>`.
pub async fn create_bootstrap_token(client: &kube::Client) -> Result<String> {
    let (id, secret) = (random_token_part(6), random_token_part(16));
    let expiration = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(TOKEN_TTL_HOURS))
        .context("token expiry")?
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let token: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "token-id": id,
            "token-secret": secret,
            "expiration": expiration,
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
            "description": "rudder up: the nodes' TLS bootstrapping",
        },
    }))?;
    Api::<Secret>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &token)
        .await
        .context("creating a bootstrap token")?;
    Ok(format!("{id}.{secret}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_parts_have_kubeadms_shape() {
        let part = super::random_token_part(16);
        assert_eq!(part.len(), 16);
        assert!(part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }
}
