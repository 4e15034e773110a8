//! kubeconfig files that carry the CA and a user's certificate or token.

use std::fmt;
use std::io;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::PkiError;
use super::files::{create_private_dir, write_atomic};

/// How a kubeconfig user proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    ClientCert { cert_pem: String, key_pem: String },
    Token(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::ClientCert { .. } => f.write_str("ClientCert([elided])"),
            Credential::Token(_) => f.write_str("Token([elided])"),
        }
    }
}

/// The subset of the kubeconfig schema we write; also usable to read one back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub clusters: Vec<NamedCluster>,
    pub users: Vec<NamedUser>,
    pub contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    pub current_context: String,
    #[serde(default)]
    pub preferences: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: ClusterEntry,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEntry {
    pub server: String,
    #[serde(rename = "certificate-authority-data")]
    pub certificate_authority_data: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: UserEntry,
}

#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserEntry {
    #[serde(rename = "client-certificate-data", default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    #[serde(rename = "client-key-data", default, skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserEntry")
            .field("client_certificate_data", &self.client_certificate_data.is_some())
            .field("client_key_data", &self.client_key_data.as_ref().map(|_| "[elided]"))
            .field("token", &self.token.as_ref().map(|_| "[elided]"))
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: ContextEntry,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextEntry {
    pub cluster: String,
    pub user: String,
}

/// Writes a single-cluster, single-user kubeconfig with mode 0600 (it holds a key or token).
///
/// The file is JSON: it is valid YAML, every kubeconfig reader (kubectl via sigs.k8s.io/yaml,
/// client-go, kube-rs, the Python client via PyYAML) accepts it, and unlike a YAML emitter it
/// cannot produce a scalar that a YAML 1.1 reader re-types (a cluster named `on`, a numeric
/// token) or a layout that older parsers mis-read.
pub fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    ca_pem: &str,
    cluster_name: &str,
    user: &str,
    credential: Credential,
) -> Result<(), PkiError> {
    let invalid = |field, reason| PkiError::InvalidKubeconfig { field, reason };
    if !server_url.starts_with("https://") {
        return Err(invalid("server", "must be an https:// URL"));
    }
    if cluster_name.is_empty() {
        return Err(invalid("cluster name", "must not be empty"));
    }
    if user.is_empty() {
        return Err(invalid("user name", "must not be empty"));
    }
    if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid("certificate-authority-data", "is not a PEM certificate"));
    }
    let user_entry = match credential {
        Credential::ClientCert { cert_pem, key_pem } => UserEntry {
            client_certificate_data: Some(BASE64.encode(cert_pem)),
            client_key_data: Some(BASE64.encode(key_pem)),
            token: None,
        },
        Credential::Token(token) => {
            if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid("token", "must be non-empty without whitespace"));
            }
            UserEntry {
                token: Some(token),
                ..UserEntry::default()
            }
        }
    };
    let context_name = format!("{user}@{cluster_name}");
    let config = Kubeconfig {
        api_version: "v1".into(),
        kind: "Config".into(),
        clusters: vec![NamedCluster {
            name: cluster_name.into(),
            cluster: ClusterEntry {
                server: server_url.into(),
                certificate_authority_data: BASE64.encode(ca_pem),
            },
        }],
        users: vec![NamedUser {
            name: user.into(),
            user: user_entry,
        }],
        contexts: vec![NamedContext {
            name: context_name.clone(),
            context: ContextEntry {
                cluster: cluster_name.into(),
                user: user.into(),
            },
        }],
        current_context: context_name,
        preferences: serde_json::Map::new(),
    };
    let mut text = serde_json::to_string_pretty(&config).map_err(|e| PkiError::Io {
        path: path.to_path_buf(),
        action: "serializing kubeconfig",
        source: io::Error::other(e),
    })?;
    text.push('\n');
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    write_atomic(path, text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::pki::Pki;
    use crate::apiserver::pki::tests::{mode, read};

    #[test]
    fn kubeconfig_round_trips_and_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(&dir.path().join("pki"), &[]).expect("create");
        let (cert_pem, key_pem) = pki
            .issue_client_cert("rudder-admin", &["system:masters"])
            .expect("issue");
        let path = dir.path().join("home/.kube/config");
        write_kubeconfig(
            &path,
            "https://127.0.0.1:6443",
            pki.ca_pem(),
            "rudder",
            "rudder-admin",
            Credential::ClientCert {
                cert_pem: cert_pem.clone(),
                key_pem: key_pem.clone(),
            },
        )
        .expect("write");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("home/.kube")), 0o700);

        let text = read(&path);
        let parsed: Kubeconfig = serde_saphyr::from_str(&text).expect("YAML parse");
        assert_eq!(parsed.api_version, "v1");
        assert_eq!(parsed.kind, "Config");
        assert_eq!(parsed.current_context, "rudder-admin@rudder");
        assert_eq!(parsed.clusters[0].name, "rudder");
        assert_eq!(parsed.clusters[0].cluster.server, "https://127.0.0.1:6443");
        let ca = BASE64
            .decode(&parsed.clusters[0].cluster.certificate_authority_data)
            .expect("b64");
        assert_eq!(ca, pki.ca_pem().as_bytes());
        let user = &parsed.users[0];
        assert_eq!(user.name, "rudder-admin");
        let cert = BASE64
            .decode(user.user.client_certificate_data.as_deref().expect("cert"))
            .expect("b64");
        let key = BASE64
            .decode(user.user.client_key_data.as_deref().expect("key"))
            .expect("b64");
        assert_eq!((cert, key), (cert_pem.into_bytes(), key_pem.into_bytes()));
        assert_eq!(user.user.token, None);
        assert_eq!(parsed.contexts[0].context.cluster, "rudder");
        assert_eq!(parsed.contexts[0].context.user, "rudder-admin");

        // Values a YAML 1.1 reader would re-type survive as strings.
        write_kubeconfig(
            &path,
            "https://[::1]:6443",
            pki.ca_pem(),
            "on",
            "0123",
            Credential::Token("12345".into()),
        )
        .expect("overwrite");
        assert_eq!(mode(&path), 0o600);
        let parsed: Kubeconfig = serde_saphyr::from_str(&read(&path)).expect("YAML parse");
        assert_eq!(parsed.clusters[0].name, "on");
        assert_eq!(parsed.users[0].name, "0123");
        assert_eq!(parsed.users[0].user.token.as_deref(), Some("12345"));
        assert_eq!(parsed.users[0].user.client_certificate_data, None);
        assert_eq!(parsed.current_context, "0123@on");

        let err = write_kubeconfig(&path, "http://x", pki.ca_pem(), "c", "u", Credential::Token("t".into()))
            .expect_err("plain http");
        assert!(err.to_string().contains("server"), "{err}");
    }
}
