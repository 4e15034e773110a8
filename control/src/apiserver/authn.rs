//! Authentication: turns a request's TLS client certificate or bearer token into a user.
//!
//! Three sources, as in Kubernetes:
//! - client certificates signed by the cluster CA (the TLS layer has already verified the
//!   chain; here CN becomes the user and each O a group);
//! - a static token file in Kubernetes' `--token-auth-file` CSV format;
//! - bound ServiceAccount tokens, HS256 JWTs signed with a key in `sa.key`, with an
//!   audience and an expiry (the API server also checks what they are bound to).
//!
//! Every authenticated user also gets the `system:authenticated` group, as Kubernetes'
//! authenticator chain adds it.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64_URL};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::{digest, hmac};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

/// Group of cluster administrators: bypasses authorization.
pub const SYSTEM_MASTERS: &str = "system:masters";
/// Added to every authenticated user.
pub const SYSTEM_AUTHENTICATED: &str = "system:authenticated";
/// The anonymous user's only group.
pub const SYSTEM_UNAUTHENTICATED: &str = "system:unauthenticated";
/// The user name of requests without credentials.
pub const SYSTEM_ANONYMOUS: &str = "system:anonymous";
/// Group of kubelets / node agents.
pub const SYSTEM_NODES: &str = "system:nodes";
/// Group of all ServiceAccounts; `system:serviceaccounts:<ns>` holds those of one namespace.
pub const SYSTEM_SERVICEACCOUNTS: &str = "system:serviceaccounts";
/// Node user names are `system:node:<node name>`.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// ServiceAccount user names are `system:serviceaccount:<namespace>:<name>`.
pub const SERVICEACCOUNT_USER_PREFIX: &str = "system:serviceaccount:";

/// JWT `iss` of the ServiceAccount tokens we issue; tokens from other issuers are rejected.
pub const SA_TOKEN_ISSUER: &str = "rudder";
pub const SA_KEY_FILE: &str = "sa.key";
const SA_KEY_LEN: usize = 32;
/// HMAC hashes a key longer than SHA-256's 64-byte block down to 32 bytes, so a longer key
/// adds nothing; refusing it catches a wrong file given as the key.
const SA_KEY_MAX_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    // --- per request: the server answers 401 ---
    #[error("client certificate: {0}")]
    InvalidClientCertificate(String),
    #[error("invalid bearer token")]
    InvalidBearerToken,
    #[error("unsupported authorization scheme {0:?}; only Bearer tokens are accepted")]
    UnsupportedAuthorizationScheme(String),
    #[error("malformed Authorization header: {0}")]
    MalformedAuthorizationHeader(&'static str),
    #[error("ServiceAccount token revoked: {0}")]
    RevokedServiceAccountToken(String),

    // --- configuration: reported at startup ---
    #[error("{path}: {action}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}:{line}: {reason}", path = .path.display())]
    TokenFileLine { path: PathBuf, line: usize, reason: String },
    #[error("{path}: invalid ServiceAccount signing key: {reason}", path = .path.display())]
    InvalidSigningKey { path: PathBuf, reason: String },
    #[error("ServiceAccount token: {0}")]
    Issue(&'static str),
}

impl AuthnError {
    /// True for errors caused by what a client presented (answer 401 Unauthorized), false
    /// for server-side configuration or I/O problems.
    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            AuthnError::InvalidClientCertificate(_)
                | AuthnError::InvalidBearerToken
                | AuthnError::UnsupportedAuthorizationScheme(_)
                | AuthnError::MalformedAuthorizationHeader(_)
                | AuthnError::RevokedServiceAccountToken(_)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A user with `system:authenticated` appended to `groups` unless already there.
    pub fn authenticated(name: impl Into<String>, uid: impl Into<String>, groups: Vec<String>) -> Self {
        let mut user = UserInfo {
            name: name.into(),
            uid: uid.into(),
            groups,
        };
        user.add_group(SYSTEM_AUTHENTICATED);
        user
    }

    /// What a request without credentials runs as.
    pub fn anonymous() -> Self {
        UserInfo {
            name: SYSTEM_ANONYMOUS.into(),
            uid: String::new(),
            groups: vec![SYSTEM_UNAUTHENTICATED.into()],
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.name == SYSTEM_ANONYMOUS
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node name, if this is a node's identity: user `system:node:<name>` in group
    /// `system:nodes`. Both are required, as in Kubernetes' node authorizer, so a user that
    /// merely picked a node-like name gets no node powers.
    pub fn is_node(&self) -> Option<&str> {
        let node = self.name.strip_prefix(NODE_USER_PREFIX)?;
        (!node.is_empty() && self.in_group(SYSTEM_NODES)).then_some(node)
    }

    /// `(namespace, name)` if this is a ServiceAccount's identity.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let rest = self.name.strip_prefix(SERVICEACCOUNT_USER_PREFIX)?;
        let (namespace, name) = rest.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && self.in_group(SYSTEM_SERVICEACCOUNTS))
            .then_some((namespace, name))
    }

    fn add_group(&mut self, group: &str) {
        if !self.in_group(group) {
            self.groups.push(group.to_string());
        }
    }
}

// --- client certificates --------------------------------------------------------------------

/// The user a client certificate names: CN is the user name, each O a group (in certificate
/// order). `der` must be the leaf the TLS layer already verified against the cluster CA;
/// this function checks no signatures.
pub fn user_from_client_cert(der: &[u8]) -> Result<UserInfo, AuthnError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| AuthnError::InvalidClientCertificate(format!("not valid DER: {e}")))?;
    let subject = cert.subject();
    let mut common_names = subject.iter_common_name();
    let name = match (common_names.next(), common_names.next()) {
        (Some(cn), None) => cn
            .as_str()
            .map_err(|_| AuthnError::InvalidClientCertificate("subject CN is not a text string".into()))?,
        (None, _) => {
            return Err(AuthnError::InvalidClientCertificate(
                "subject has no CN (it names the user)".into(),
            ));
        }
        // Go's x509 silently keeps the last CN; refusing is clearer than guessing.
        (Some(_), Some(_)) => {
            return Err(AuthnError::InvalidClientCertificate(
                "subject has several CNs, so the user name is ambiguous".into(),
            ));
        }
    };
    if name.is_empty() {
        return Err(AuthnError::InvalidClientCertificate("subject CN is empty".into()));
    }
    let groups = subject
        .iter_organization()
        .map(|o| {
            o.as_str()
                .map(str::to_owned)
                .map_err(|_| AuthnError::InvalidClientCertificate("subject O is not a text string".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Kubernetes gives certificate users no UID.
    Ok(UserInfo::authenticated(name, "", groups))
}

// --- crypto primitives ----------------------------------------------------------------------

fn hmac_key(key: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, key)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

fn random_bytes(buf: &mut [u8]) -> Result<(), AuthnError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| AuthnError::Issue("the system random number generator failed"))
}

// --- static token file ----------------------------------------------------------------------

/// Kubernetes' static token file: `token,user,uid[,"group1,group2"]` per line. Blank lines
/// and lines starting with `#` are skipped.
///
/// Stricter than kube-apiserver where its leniency hides mistakes: an unquoted group list
/// (more than 4 columns) is an error rather than keeping only the first group, and empty or
/// duplicate tokens are errors rather than warnings.
pub struct TokenFile {
    entries: Vec<TokenEntry>,
}

struct TokenEntry {
    /// Tokens are held as SHA-256 digests so every comparison has the same length and the
    /// plaintext is not kept in memory longer than parsing.
    digest: [u8; 32],
    user: UserInfo,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile")
            .field("users", &self.entries.iter().map(|e| &e.user.name).collect::<Vec<_>>())
            .finish()
    }
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<TokenFile, AuthnError> {
        let contents = fs::read_to_string(path).map_err(|source| AuthnError::Io {
            path: path.to_path_buf(),
            action: "reading token file",
            source,
        })?;
        TokenFile::parse(&contents, path)
    }

    /// Parses token file text; `origin` only names the source in errors.
    pub fn parse(contents: &str, origin: &Path) -> Result<TokenFile, AuthnError> {
        let mut entries: Vec<TokenEntry> = Vec::new();
        let mut first_line_of: Vec<usize> = Vec::new();
        for (index, raw_line) in contents.lines().enumerate() {
            let line_no = index + 1;
            let line = raw_line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |reason: String| AuthnError::TokenFileLine {
                path: origin.to_path_buf(),
                line: line_no,
                reason,
            };
            let fields = split_csv_line(line).map_err(|r| error(r.to_string()))?;
            if fields.len() < 3 {
                return Err(error(format!(
                    "expected at least 3 columns (token,user,uid), found {}",
                    fields.len()
                )));
            }
            if fields.len() > 4 {
                return Err(error(format!(
                    "expected at most 4 columns (token,user,uid,\"groups\"), found {}; quote \
                     the groups column when it lists several groups: \"group1,group2\"",
                    fields.len()
                )));
            }
            let token = &fields[0];
            if token.is_empty() {
                return Err(error("token column is empty".into()));
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(error(
                    "token contains whitespace or control characters, which cannot be sent \
                     in an Authorization header"
                        .into(),
                ));
            }
            if fields[1].is_empty() {
                return Err(error("user name column is empty".into()));
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let digest = sha256(token.as_bytes());
            if let Some(i) = entries.iter().position(|e| e.digest == digest) {
                return Err(error(format!(
                    "duplicate token (first used on line {})",
                    first_line_of[i]
                )));
            }
            entries.push(TokenEntry {
                digest,
                user: UserInfo::authenticated(fields[1].clone(), fields[2].clone(), groups),
            });
            first_line_of.push(line_no);
        }
        Ok(TokenFile { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks every entry, without stopping at a match, so timing says nothing about which
    /// or how many tokens exist.
    pub fn authenticate(&self, token: &str) -> Option<UserInfo> {
        let digest = sha256(token.as_bytes());
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(&entry.user);
            }
        }
        found.cloned()
    }
}

/// One CSV record as Go's encoding/csv reads it with `TrimLeadingSpace`: comma-separated,
/// fields may be double-quoted with `""` for a literal quote. Unquoted fields are also
/// trimmed at the end, since a stray trailing space in a token is never intended. Errors
/// never quote the line: it holds a secret.
fn split_csv_line(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let mut field = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted field"),
                    Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("unexpected character after a closing quote"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim_end().to_string());
                        return Ok(fields);
                    }
                    Some(',') => {
                        fields.push(field.trim_end().to_string());
                        break;
                    }
                    Some('"') => return Err("quote inside an unquoted field"),
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

// --- ServiceAccount tokens ------------------------------------------------------------------

/// Issues and verifies bound ServiceAccount tokens: HS256 JWTs with the claims of
/// Kubernetes' TokenRequest tokens (`aud`, `exp`, `nbf`, `jti`, and under `kubernetes.io`
/// the ServiceAccount and the pod, Secret or Node the token is bound to).
///
/// Every token expires and names its audiences; one is accepted only while unexpired and
/// meant for one of [`ServiceAccountTokens::api_audiences`]. That the ServiceAccount and
/// the bound object still exist with the token's UIDs needs the store, so the API server
/// checks it after this (`apiserver::sa_token`).
pub struct ServiceAccountTokens {
    key: hmac::Key,
    api_audiences: Vec<String>,
}

impl fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountTokens")
            .field("key", &"[elided]")
            .field("api_audiences", &self.api_audiences)
            .finish()
    }
}

/// How far `exp` and `nbf` may be off, as upstream's JWT validation allows for servers
/// whose clocks differ slightly.
pub const CLOCK_SKEW_LEEWAY_SECS: u64 = 60;

/// An object a token is bound to (`kubernetes.io.pod`, `.secret` or `.node`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundRef {
    pub name: String,
    pub uid: String,
}

/// What a token says, whether about to be issued or verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountClaims {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub audiences: Vec<String>,
    pub issued_at: u64,
    pub not_before: u64,
    pub expires_at: u64,
    /// Set when the expiry was extended for a kubelet-requested token: after this the
    /// token still works, but upstream would warn that a client did not refresh it.
    pub warn_after: Option<u64>,
    /// `jti`: a random ID naming this credential.
    pub id: String,
    pub pod: Option<BoundRef>,
    pub secret: Option<BoundRef>,
    pub node: Option<BoundRef>,
}

impl ServiceAccountClaims {
    /// Claims for a token issued at `now` that lives `seconds`, bound to nothing yet.
    pub fn new(namespace: &str, name: &str, uid: &str, audiences: Vec<String>, now: u64, seconds: u64) -> Self {
        ServiceAccountClaims {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            audiences,
            issued_at: now,
            not_before: now,
            expires_at: now.saturating_add(seconds),
            warn_after: None,
            id: String::new(),
            pod: None,
            secret: None,
            node: None,
        }
    }

    /// The user the token authenticates as.
    pub fn user(&self) -> UserInfo {
        let groups = vec![
            SYSTEM_SERVICEACCOUNTS.to_string(),
            format!("{SYSTEM_SERVICEACCOUNTS}:{}", self.namespace),
        ];
        UserInfo::authenticated(
            format!("{SERVICEACCOUNT_USER_PREFIX}{}:{}", self.namespace, self.name),
            self.uid.clone(),
            groups,
        )
    }
}

#[derive(Serialize, Deserialize)]
struct JwtHeader {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct JwtClaims {
    aud: Vec<String>,
    exp: u64,
    iat: u64,
    iss: String,
    #[serde(default)]
    jti: String,
    nbf: u64,
    sub: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

#[derive(Serialize, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<BoundRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<BoundRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<BoundRef>,
    serviceaccount: BoundRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    warnafter: Option<u64>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ServiceAccountTokens {
    /// `signing_key` must be 32 to 64 bytes (HMAC-SHA256 gains nothing beyond its 64-byte
    /// block; below 32 bytes the key is weaker than the hash). The API audiences start as
    /// the issuer alone, as kube-apiserver's `--api-audiences` defaults to its issuer.
    pub fn new(signing_key: &[u8]) -> Result<Self, AuthnError> {
        Self::check_key_len(signing_key.len()).map_err(AuthnError::Issue)?;
        Ok(Self::from_key(signing_key))
    }

    fn from_key(key: &[u8]) -> Self {
        ServiceAccountTokens {
            key: hmac_key(key),
            api_audiences: vec![SA_TOKEN_ISSUER.to_owned()],
        }
    }

    /// The audiences this API server accepts (and gives tokens that ask for none).
    pub fn with_api_audiences(mut self, audiences: Vec<String>) -> Self {
        if !audiences.is_empty() {
            self.api_audiences = audiences;
        }
        self
    }

    pub fn api_audiences(&self) -> &[String] {
        &self.api_audiences
    }

    fn check_key_len(len: usize) -> Result<(), &'static str> {
        if (SA_KEY_LEN..=SA_KEY_MAX_LEN).contains(&len) {
            Ok(())
        } else {
            Err("signing key must be 32 to 64 bytes")
        }
    }

    /// Loads `dir/sa.key` (base64 text) or creates it with 32 random bytes, mode 0600.
    pub fn load_or_create(dir: &Path) -> Result<Self, AuthnError> {
        let path = dir.join(SA_KEY_FILE);
        let io_err = |action| {
            let path = path.clone();
            move |source| AuthnError::Io { path, action, source }
        };
        match fs::read_to_string(&path) {
            Ok(text) => {
                let invalid = |reason: &str| AuthnError::InvalidSigningKey {
                    path: path.clone(),
                    reason: reason.to_string(),
                };
                let key = BASE64.decode(text.trim()).map_err(|_| invalid("not base64 text"))?;
                Self::check_key_len(key.len()).map_err(invalid)?;
                Ok(Self::from_key(&key))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut key = vec![0u8; SA_KEY_LEN];
                random_bytes(&mut key)?;
                fs::create_dir_all(dir).map_err(io_err("creating directory"))?;
                // create_new: if another process created the key meanwhile, fail loudly
                // rather than overwrite a key whose tokens are already out there.
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err("creating"))?;
                let mut text = BASE64.encode(&key);
                text.push('\n');
                file.write_all(text.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io_err("writing"))?;
                Ok(Self::from_key(&key))
            }
            Err(e) => Err(io_err("reading")(e)),
        }
    }

    /// Signs `claims`, giving them a fresh random `jti` when they have none.
    pub fn issue(&self, claims: &ServiceAccountClaims) -> Result<String, AuthnError> {
        let mut id = claims.id.clone();
        if id.is_empty() {
            let mut raw = [0u8; 16];
            random_bytes(&mut raw)?;
            id = uuid_v4(raw);
        }
        Ok(self.sign(claims, id))
    }

    fn sign(&self, claims: &ServiceAccountClaims, id: String) -> String {
        let header = JwtHeader {
            alg: "HS256".into(),
            typ: Some("JWT".into()),
        };
        let jwt = JwtClaims {
            aud: claims.audiences.clone(),
            exp: claims.expires_at,
            iat: claims.issued_at,
            iss: SA_TOKEN_ISSUER.into(),
            jti: id,
            nbf: claims.not_before,
            sub: format!("{SERVICEACCOUNT_USER_PREFIX}{}:{}", claims.namespace, claims.name),
            kubernetes: KubernetesClaims {
                namespace: claims.namespace.clone(),
                node: claims.node.clone(),
                pod: claims.pod.clone(),
                secret: claims.secret.clone(),
                serviceaccount: BoundRef {
                    name: claims.name.clone(),
                    uid: claims.uid.clone(),
                },
                warnafter: claims.warn_after,
            },
        };
        // Serializing these plain string/number structs cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let jwt = serde_json::to_vec(&jwt).unwrap_or_default();
        let mut token = BASE64_URL.encode(header);
        token.push('.');
        token.push_str(&BASE64_URL.encode(jwt));
        let signature = hmac::sign(&self.key, token.as_bytes());
        token.push('.');
        token.push_str(&BASE64_URL.encode(signature));
        token
    }

    /// The user a valid token names, or `None` for anything else (other issuers, other
    /// keys, tampering, expiry, other audiences, malformed input).
    pub fn verify(&self, token: &str) -> Option<UserInfo> {
        self.verify_claims(token).map(|c| c.user())
    }

    pub fn verify_claims(&self, token: &str) -> Option<ServiceAccountClaims> {
        self.verify_claims_at(token, unix_now())
    }

    fn verify_claims_at(&self, token: &str, now: u64) -> Option<ServiceAccountClaims> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        // Signature first: nothing attacker-controlled is parsed before it checks out.
        let signed_len = header_b64.len() + 1 + claims_b64.len();
        let signature = BASE64_URL.decode(signature_b64).ok()?;
        // Compares in constant time, so response time does not reveal how much of a forged
        // signature was right.
        hmac::verify(&self.key, token.get(..signed_len)?.as_bytes(), &signature).ok()?;
        let header: JwtHeader = serde_json::from_slice(&BASE64_URL.decode(header_b64).ok()?).ok()?;
        if header.alg != "HS256" {
            return None;
        }
        let claims: JwtClaims = serde_json::from_slice(&BASE64_URL.decode(claims_b64).ok()?).ok()?;
        let namespace = claims.kubernetes.namespace;
        let name = claims.kubernetes.serviceaccount.name;
        if claims.iss != SA_TOKEN_ISSUER
            || namespace.is_empty()
            || name.is_empty()
            || claims.sub != format!("{SERVICEACCOUNT_USER_PREFIX}{namespace}:{name}")
        {
            return None;
        }
        if now >= claims.exp.saturating_add(CLOCK_SKEW_LEEWAY_SECS)
            || claims.nbf > now.saturating_add(CLOCK_SKEW_LEEWAY_SECS)
        {
            return None;
        }
        if !claims.aud.iter().any(|a| self.api_audiences.contains(a)) {
            return None;
        }
        Some(ServiceAccountClaims {
            namespace,
            name,
            uid: claims.kubernetes.serviceaccount.uid,
            audiences: claims.aud,
            issued_at: claims.iat,
            not_before: claims.nbf,
            expires_at: claims.exp,
            warn_after: claims.kubernetes.warnafter,
            id: claims.jti,
            pod: claims.kubernetes.pod,
            secret: claims.kubernetes.secret,
            node: claims.kubernetes.node,
        })
    }
}

/// An RFC 4122 version 4 UUID from 16 random bytes.
fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

// --- the request authenticator --------------------------------------------------------------

/// Who a request comes from, and, for a ServiceAccount token, what the token says (the
/// caller still has to check that its ServiceAccount and bound object exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub user: UserInfo,
    pub service_account: Option<ServiceAccountClaims>,
}

#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: Option<TokenFile>,
    sa: Option<ServiceAccountTokens>,
}

impl Authenticator {
    pub fn new(tokens: Option<TokenFile>, sa: Option<ServiceAccountTokens>) -> Self {
        Authenticator { tokens, sa }
    }

    /// For issuing tokens (the TokenRequest API).
    pub fn service_accounts(&self) -> Option<&ServiceAccountTokens> {
        self.sa.as_ref()
    }

    /// Who is calling; see [`Authenticator::authenticate_detailed`].
    pub fn authenticate(
        &self,
        peer_cert_der: Option<&[u8]>,
        authorization_header: Option<&str>,
    ) -> Result<Option<UserInfo>, AuthnError> {
        Ok(self
            .authenticate_detailed(peer_cert_der, authorization_header)?
            .map(|a| a.user))
    }

    /// Who is calling.
    ///
    /// - `peer_cert_der`: the client's leaf certificate as verified by the TLS layer.
    /// - `authorization_header`: the raw `Authorization` header value.
    ///
    /// A usable client certificate wins. Otherwise a `Bearer` token is checked against the
    /// token file, then as a ServiceAccount token. `Ok(None)` means no credentials at all
    /// (the caller decides what anonymous may do); presented but invalid credentials are an
    /// error, answered with 401, never downgraded to anonymous.
    pub fn authenticate_detailed(
        &self,
        peer_cert_der: Option<&[u8]>,
        authorization_header: Option<&str>,
    ) -> Result<Option<Authenticated>, AuthnError> {
        let cert_result = peer_cert_der.map(user_from_client_cert);
        let cert_error = match cert_result {
            Some(Ok(user)) => {
                return Ok(Some(Authenticated {
                    user,
                    service_account: None,
                }));
            }
            Some(Err(e)) => Some(e),
            None => None,
        };
        // A CA-signed certificate without a usable CN may come from a client that also has
        // a token (e.g. a proxy's certificate); let the token decide before failing.
        let Some(header) = authorization_header else {
            return match cert_error {
                Some(e) => Err(e),
                None => Ok(None),
            };
        };
        let token = bearer_token(header)?;
        if let Some(user) = self.tokens.as_ref().and_then(|t| t.authenticate(token)) {
            return Ok(Some(Authenticated {
                user,
                service_account: None,
            }));
        }
        if let Some(claims) = self.sa.as_ref().and_then(|sa| sa.verify_claims(token)) {
            return Ok(Some(Authenticated {
                user: claims.user(),
                service_account: Some(claims),
            }));
        }
        Err(AuthnError::InvalidBearerToken)
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 7235).
fn bearer_token(header: &str) -> Result<&str, AuthnError> {
    let header = header.trim();
    let (scheme, rest) = header.split_once([' ', '\t']).unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // The scheme is not secret; cap it so a junk header cannot flood the logs.
        let shown: String = scheme.chars().take(20).collect();
        return Err(AuthnError::UnsupportedAuthorizationScheme(shown));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthnError::MalformedAuthorizationHeader("empty bearer token"));
    }
    if token.contains(char::is_whitespace) {
        return Err(AuthnError::MalformedAuthorizationHeader(
            "bearer token contains whitespace",
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac_key(key), message).as_ref().to_vec()
    }

    /// RFC 4231 section 4, HMAC-SHA-256 for all seven test cases: keys shorter than, equal
    /// to and longer than the 64-byte block (cases 6 and 7 use 131 bytes, which HMAC hashes
    /// first), and case 5's output truncated to 128 bits.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let key_131 = [0xaa; 131];
        let case_7 = b"This is a test using a larger than block-size key and a larger than block-size \
                       data. The key needs to be hashed before being used by the HMAC algorithm.";
        let cases: [(&[u8], &[u8], &str); 7] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 20],
                &[0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                &[
                    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10,
                    0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19,
                ],
                &[0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (&[0x0c; 20], b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),
            (
                &key_131,
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                &key_131,
                case_7,
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (i, (key, data, want)) in cases.into_iter().enumerate() {
            let tag = hex(&hmac_sha256(key, data));
            assert_eq!(&tag[..want.len()], want, "RFC 4231 test case {}", i + 1);
        }
    }

    #[test]
    fn sha256_matches_fips_180_vector() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    const TOKENS: &str = r#"# static tokens
admin-token,admin,uid-1,"system:masters"

  # indented comment
plain-token, bob ,uid-2
quoted-token,carol,uid-3,"dev, ops ,qa"
"quoted""tok",dave,,"a"
"#;

    #[test]
    fn token_file_parses_kubernetes_format() {
        let file = TokenFile::parse(TOKENS, Path::new("tokens.csv")).expect("parse");
        assert_eq!(file.len(), 4);
        let admin = file.authenticate("admin-token").expect("admin");
        assert_eq!(admin.name, "admin");
        assert_eq!(admin.uid, "uid-1");
        assert_eq!(admin.groups, ["system:masters", SYSTEM_AUTHENTICATED]);
        let bob = file.authenticate("plain-token").expect("bob");
        assert_eq!((bob.name.as_str(), bob.uid.as_str()), ("bob", "uid-2"));
        assert_eq!(bob.groups, [SYSTEM_AUTHENTICATED]);
        let carol = file.authenticate("quoted-token").expect("carol");
        assert_eq!(carol.groups, ["dev", "ops", "qa", SYSTEM_AUTHENTICATED]);
        let dave = file.authenticate("quoted\"tok").expect("dave");
        assert_eq!((dave.name.as_str(), dave.uid.as_str()), ("dave", ""));
        assert_eq!(file.authenticate("admin-token "), None);
        assert_eq!(file.authenticate("admin"), None);
        assert_eq!(file.authenticate(""), None);
    }

    #[test]
    fn token_file_errors_name_the_line_and_hide_the_token() {
        let cases = [
            ("# c\nsecret-abc,user\n", 2, "at least 3 columns"),
            ("ok,u,1\n\nsecret-abc,user,1,g1,g2\n", 3, "quote the groups"),
            ("secret-abc,user,1,\"g1,g2\n", 1, "unterminated"),
            ("secret-abc,user,1,\"g\"x\n", 1, "closing quote"),
            ("sec\"ret-abc,user,1\n", 1, "quote inside"),
            (",user,1\n", 1, "token column is empty"),
            ("secret-abc,,1\n", 1, "user name column is empty"),
            ("\"secret abc\",user,1\n", 1, "whitespace"),
            (
                "secret-abc,a,1\nx,b,2\nsecret-abc,c,3\n",
                3,
                "duplicate token (first used on line 1)",
            ),
        ];
        for (text, line, reason) in cases {
            let err = TokenFile::parse(text, Path::new("/etc/rudder/tokens.csv")).expect_err(text);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("/etc/rudder/tokens.csv:{line}: ")),
                "{text:?}: {msg}"
            );
            assert!(msg.contains(reason), "{text:?}: {msg}");
            assert!(!msg.contains("secret"), "token leaked: {msg}");
            assert!(!err.is_unauthorized());
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.csv");
        let err = TokenFile::load(&missing).expect_err("missing file");
        assert!(err.to_string().contains("nope.csv"), "{err}");
        fs::write(&missing, "t,u,1\n").expect("write");
        assert_eq!(TokenFile::load(&missing).expect("load").len(), 1);
    }

    /// A token for `namespace/name` (UID `uid`) for the API audience, valid for an hour.
    fn token(sa: &ServiceAccountTokens, namespace: &str, name: &str, uid: &str) -> String {
        let claims = ServiceAccountClaims::new(namespace, name, uid, sa.api_audiences().to_vec(), unix_now(), 3600);
        sa.issue(&claims).expect("issue")
    }

    fn fixed_claims() -> ServiceAccountClaims {
        let mut claims = ServiceAccountClaims::new(
            "kube-system",
            "coredns",
            "uid-123",
            vec!["rudder".into()],
            1_700_000_000,
            3600,
        );
        claims.pod = Some(BoundRef {
            name: "coredns-0".into(),
            uid: "pod-uid".into(),
        });
        claims
    }

    /// The exact token for fixed inputs, signed by Python's `hmac` module: any HS256 JWT
    /// library must produce and accept the same bytes.
    #[test]
    fn service_account_token_matches_an_independent_hs256_signer() {
        const PYTHON_SIGNED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOlsicnVkZGVyIl0sImV4cCI6MTcwMDAwMzYwMCwiaWF0IjoxNzAwMDAwMDAwLCJpc\
            3MiOiJydWRkZXIiLCJqdGkiOiJpZC0xIiwibmJmIjoxNzAwMDAwMDAwLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a3ViZS1zeXN0ZW0\
            6Y29yZWRucyIsImt1YmVybmV0ZXMuaW8iOnsibmFtZXNwYWNlIjoia3ViZS1zeXN0ZW0iLCJwb2QiOnsibmFtZSI6ImNvcmVkbnMtMCIsInVpZ\
            CI6InBvZC11aWQifSwic2VydmljZWFjY291bnQiOnsibmFtZSI6ImNvcmVkbnMiLCJ1aWQiOiJ1aWQtMTIzIn19fQ.FP8WX49-desr55rHklnS\
            UBEXzfZVSQTh0AmaIMCWmB0";
        let sa = ServiceAccountTokens::new(&[7u8; 32]).expect("key");
        assert_eq!(sa.sign(&fixed_claims(), "id-1".into()), PYTHON_SIGNED);
        let claims = sa.verify_claims_at(PYTHON_SIGNED, 1_700_000_100).expect("verifies");
        assert_eq!(
            claims,
            ServiceAccountClaims {
                id: "id-1".into(),
                ..fixed_claims()
            }
        );
    }

    #[test]
    fn service_account_tokens_expire_and_are_for_the_api_audiences() {
        let sa = ServiceAccountTokens::new(&[7u8; 32]).expect("key");
        let signed = sa.sign(&fixed_claims(), "id-1".into());
        // Valid from nbf (less the leeway) to exp (plus the leeway).
        assert!(
            sa.verify_claims_at(&signed, 1_700_000_000 - CLOCK_SKEW_LEEWAY_SECS)
                .is_some()
        );
        assert!(
            sa.verify_claims_at(&signed, 1_700_000_000 - CLOCK_SKEW_LEEWAY_SECS - 1)
                .is_none()
        );
        assert!(
            sa.verify_claims_at(&signed, 1_700_003_600 + CLOCK_SKEW_LEEWAY_SECS - 1)
                .is_some()
        );
        assert!(
            sa.verify_claims_at(&signed, 1_700_003_600 + CLOCK_SKEW_LEEWAY_SECS)
                .is_none()
        );
        // A server with other audiences refuses it; one listing it among others takes it.
        let other = ServiceAccountTokens::new(&[7u8; 32])
            .expect("key")
            .with_api_audiences(vec!["vault".into()]);
        assert!(other.verify_claims_at(&signed, 1_700_000_100).is_none());
        let both = ServiceAccountTokens::new(&[7u8; 32])
            .expect("key")
            .with_api_audiences(vec!["vault".into(), "rudder".into()]);
        assert!(both.verify_claims_at(&signed, 1_700_000_100).is_some());
        // A token for another audience only.
        let mut claims = fixed_claims();
        claims.audiences = vec!["vault".into()];
        assert!(
            sa.verify_claims_at(&sa.sign(&claims, "x".into()), 1_700_000_100)
                .is_none()
        );
        claims.audiences = vec![];
        assert!(
            sa.verify_claims_at(&sa.sign(&claims, "x".into()), 1_700_000_100)
                .is_none()
        );
        // Fresh IDs are random version 4 UUIDs.
        let a = token_claims(&token(&sa, "a", "b", "c"));
        let b = token_claims(&token(&sa, "a", "b", "c"));
        let id = a["jti"].as_str().expect("jti");
        assert_eq!((id.len(), &id[14..15]), (36, "4"), "{id}");
        assert_ne!(a["jti"], b["jti"]);
    }

    fn token_claims(token: &str) -> serde_json::Value {
        let payload = token.split('.').nth(1).expect("payload");
        serde_json::from_slice(&BASE64_URL.decode(payload).expect("b64")).expect("json")
    }

    #[test]
    fn service_account_tokens_verify_and_reject_tampering() {
        let sa = ServiceAccountTokens::new(&[7u8; 32]).expect("key");
        let token = token(&sa, "kube-system", "coredns", "uid-123");
        let user = sa.verify(&token).expect("valid");
        assert_eq!(user.name, "system:serviceaccount:kube-system:coredns");
        assert_eq!(user.uid, "uid-123");
        assert_eq!(
            user.groups,
            [
                SYSTEM_SERVICEACCOUNTS,
                "system:serviceaccounts:kube-system",
                SYSTEM_AUTHENTICATED
            ]
        );
        assert_eq!(user.service_account(), Some(("kube-system", "coredns")));

        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&BASE64_URL.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(claims["iss"], "rudder");
        assert_eq!(claims["sub"], "system:serviceaccount:kube-system:coredns");
        assert_eq!(claims["kubernetes.io"]["namespace"], "kube-system");
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "coredns");
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["uid"], "uid-123");
        assert!(claims["iat"].as_u64().is_some_and(|t| t > 1_700_000_000));
        let iat = claims["iat"].as_u64().expect("iat");
        assert_eq!(claims["exp"].as_u64(), Some(iat + 3600));
        assert_eq!(claims["nbf"].as_u64(), Some(iat));
        assert_eq!(claims["aud"], serde_json::json!(["rudder"]));

        // Claims swapped for another SA, signature kept.
        let forged_claims = BASE64_URL.encode(
            String::from_utf8(BASE64_URL.decode(parts[1]).expect("b64"))
                .expect("utf8")
                .replace("kube-system", "default"),
        );
        assert_eq!(sa.verify(&format!("{}.{forged_claims}.{}", parts[0], parts[2])), None);
        // One flipped signature character.
        let mut sig = parts[2].to_string();
        let last = if sig.ends_with('A') { "B" } else { "A" };
        sig.replace_range(sig.len() - 1.., last);
        assert_eq!(sa.verify(&format!("{}.{}.{sig}", parts[0], parts[1])), None);
        // alg "none" with an empty signature.
        let none = BASE64_URL.encode(r#"{"alg":"none"}"#);
        assert_eq!(sa.verify(&format!("{none}.{}.", parts[1])), None);
        // Another key, extra or missing segments, garbage.
        let other = ServiceAccountTokens::new(&[8u8; 32]).expect("key");
        assert_eq!(other.verify(&token), None);
        assert_eq!(sa.verify(&format!("{token}.x")), None);
        assert_eq!(sa.verify(&format!("{}.{}", parts[0], parts[1])), None);
        assert_eq!(sa.verify("not a token"), None);
        assert_eq!(sa.verify(""), None);
        // Correctly signed but from another issuer.
        // Correctly signed but from another issuer, or without an expiry or audience (the
        // never-expiring tokens this server issued before TokenRequest).
        let sign = |claims: &str| {
            let signed = format!("{}.{}", parts[0], BASE64_URL.encode(claims));
            let sig = BASE64_URL.encode(hmac_sha256(&[7u8; 32], signed.as_bytes()));
            format!("{signed}.{sig}")
        };
        let k8s = r#""sub":"system:serviceaccount:a:b","kubernetes.io":{"namespace":"a","serviceaccount":{"name":"b","uid":"u"}}"#;
        let good = format!(r#"{{"iss":"rudder","aud":["rudder"],"iat":1,"nbf":1,"exp":9999999999,{k8s}}}"#);
        assert!(sa.verify(&sign(&good)).is_some(), "the control case verifies");
        for bad in [
            good.replace(r#""iss":"rudder""#, r#""iss":"kubernetes/serviceaccount""#),
            good.replace(r#""exp":9999999999,"#, ""),
            good.replace(r#""aud":["rudder"],"#, ""),
            good.replace(r#""aud":["rudder"]"#, r#""aud":"rudder""#),
        ] {
            assert_eq!(sa.verify(&sign(&bad)), None, "{bad}");
        }

        assert!(ServiceAccountTokens::new(&[1u8; 16]).is_err());
        assert!(ServiceAccountTokens::new(&[1u8; 65]).is_err());
    }

    #[test]
    fn service_account_key_is_persisted_privately() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sa = ServiceAccountTokens::load_or_create(dir.path()).expect("create");
        let path = dir.path().join(SA_KEY_FILE);
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let token = token(&sa, "default", "builder", "u1");
        let reloaded = ServiceAccountTokens::load_or_create(dir.path()).expect("reload");
        assert_eq!(reloaded.verify(&token).map(|u| u.uid), Some("u1".to_string()));
        let claims = reloaded.verify_claims(&token).expect("claims");
        assert_eq!(
            (claims.namespace.as_str(), claims.name.as_str()),
            ("default", "builder")
        );

        fs::write(&path, "c2hvcnQ=\n").expect("write"); // "short"
        let err = ServiceAccountTokens::load_or_create(dir.path()).expect_err("short key");
        let msg = err.to_string();
        assert!(msg.contains("sa.key") && msg.contains("32 to 64 bytes"), "{msg}");
        assert!(!msg.contains("c2hvcnQ"), "{msg}");
        fs::write(&path, "!!!").expect("write");
        assert!(ServiceAccountTokens::load_or_create(dir.path()).is_err());
    }

    #[test]
    fn authenticator_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authenticator>();
        assert_send_sync::<AuthnError>();
    }

    #[test]
    fn user_info_helpers() {
        let node = UserInfo::authenticated("system:node:worker-1", "", vec![SYSTEM_NODES.into()]);
        assert_eq!(node.is_node(), Some("worker-1"));
        assert_eq!(node.groups, [SYSTEM_NODES, SYSTEM_AUTHENTICATED]);
        let impostor = UserInfo::authenticated("system:node:worker-1", "", vec![]);
        assert_eq!(impostor.is_node(), None);
        assert_eq!(
            UserInfo::authenticated("system:node:", "", vec![SYSTEM_NODES.into()]).is_node(),
            None
        );
        let anon = UserInfo::anonymous();
        assert!(anon.is_anonymous() && anon.in_group(SYSTEM_UNAUTHENTICATED));
        assert!(!anon.in_group(SYSTEM_AUTHENTICATED));
        assert_eq!(anon.service_account(), None);
        let twice = UserInfo::authenticated("u", "", vec![SYSTEM_AUTHENTICATED.into()]);
        assert_eq!(twice.groups, [SYSTEM_AUTHENTICATED]);
    }

    fn authenticator() -> (Authenticator, ServiceAccountTokens) {
        let tokens = TokenFile::parse(TOKENS, Path::new("t")).expect("tokens");
        let key = [3u8; 32];
        let auth = Authenticator::new(Some(tokens), Some(ServiceAccountTokens::new(&key).expect("key")));
        (auth, ServiceAccountTokens::new(&key).expect("key"))
    }

    #[test]
    fn authenticator_order_and_errors() {
        let (auth, sa) = authenticator();
        assert_eq!(auth.authenticate(None, None).expect("anonymous"), None);

        let admin = auth
            .authenticate(None, Some("Bearer admin-token"))
            .expect("ok")
            .expect("user");
        assert_eq!(admin.name, "admin");
        let admin = auth
            .authenticate(None, Some("bearer   admin-token "))
            .expect("ok")
            .expect("user");
        assert_eq!(admin.name, "admin");

        let sa_token = token(&sa, "ns1", "robot", "u-9");
        let robot = auth
            .authenticate(None, Some(&format!("Bearer {sa_token}")))
            .expect("ok")
            .expect("user");
        assert_eq!(robot.name, "system:serviceaccount:ns1:robot");

        for (header, unauthorized) in [
            ("Bearer wrong", "invalid bearer token"),
            ("Bearer ", "empty bearer token"),
            ("Bearer", "empty bearer token"),
            ("Bearer a b", "whitespace"),
            ("Basic dXNlcjpwYXNz", "\"Basic\""),
        ] {
            let err = auth.authenticate(None, Some(header)).expect_err(header);
            assert!(err.is_unauthorized(), "{header}: {err}");
            assert!(err.to_string().contains(unauthorized), "{header}: {err}");
        }
        let tampered = format!("Bearer {}x", sa_token);
        assert!(matches!(
            auth.authenticate(None, Some(&tampered)),
            Err(AuthnError::InvalidBearerToken)
        ));

        // Nothing configured: any token is invalid, no credentials is anonymous.
        let bare = Authenticator::default();
        assert!(bare.authenticate(None, Some("Bearer admin-token")).is_err());
        assert_eq!(bare.authenticate(None, None).expect("ok"), None);
        assert!(bare.service_accounts().is_none());
    }

    #[test]
    fn client_certificate_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = super::super::pki::Pki::load_or_create(dir.path(), &[]).expect("pki");
        let (node_pem, _) = pki.issue_client_cert("system:node:n1", &[SYSTEM_NODES]).expect("issue");
        let node_der = pem_der(&node_pem);
        let user = user_from_client_cert(&node_der).expect("user");
        assert_eq!(user.name, "system:node:n1");
        assert_eq!(user.uid, "");
        assert_eq!(user.groups, [SYSTEM_NODES, SYSTEM_AUTHENTICATED]);
        assert_eq!(user.is_node(), Some("n1"));

        let (auth, _) = authenticator();
        // A valid certificate wins over any token, even a bad one.
        let who = auth
            .authenticate(Some(&node_der), Some("Bearer wrong"))
            .expect("ok")
            .expect("user");
        assert_eq!(who.name, "system:node:n1");

        let err = user_from_client_cert(b"garbage").expect_err("garbage");
        assert!(err.is_unauthorized(), "{err}");
        // Unusable certificate: a token may still authenticate, else it is an error.
        let who = auth
            .authenticate(Some(b"garbage"), Some("Bearer admin-token"))
            .expect("ok")
            .expect("user");
        assert_eq!(who.name, "admin");
        assert!(auth.authenticate(Some(b"garbage"), None).is_err());
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject as _};
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM").to_vec()
    }

    /// Real TLS handshakes over loopback between `Pki::server_config` and rustls clients.
    mod tls {
        use super::super::super::pki::Pki;
        use super::*;
        use std::net::SocketAddr;
        use std::sync::Arc;
        use std::time::Duration;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        use tokio::net::{TcpListener, TcpStream};
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
        use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
        use tokio_rustls::{TlsAcceptor, TlsConnector};

        /// What the server saw: the client's leaf certificate and the negotiated ALPN.
        type Seen = (Option<Vec<u8>>, Option<Vec<u8>>);

        async fn serve_once(config: Arc<ServerConfig>) -> (SocketAddr, tokio::task::JoinHandle<io::Result<Seen>>) {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let task = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await?;
                let mut tls = TlsAcceptor::from(config).accept(tcp).await?;
                let (_, conn) = tls.get_ref();
                let peer = conn
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|c| c.to_vec());
                let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                tls.write_all(b"hello").await?;
                tls.shutdown().await?;
                Ok((peer, alpn))
            });
            (addr, task)
        }

        async fn connect(addr: SocketAddr, ca_pem: &str, client_cert: Option<(String, String)>) -> io::Result<Vec<u8>> {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM"))
                .expect("root");
            let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots);
            let mut config = match client_cert {
                Some((cert, key)) => builder
                    .with_client_auth_cert(
                        vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                        PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
                    )
                    .expect("client auth"),
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").expect("name");
            let mut tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await?;
            Ok(buf)
        }

        async fn handshake(
            pki: &Pki,
            client_cert: Option<(String, String)>,
        ) -> (io::Result<Vec<u8>>, io::Result<Seen>) {
            let (addr, server) = serve_once(pki.server_config().expect("server config")).await;
            let limit = Duration::from_secs(20);
            let client = tokio::time::timeout(limit, connect(addr, pki.ca_pem(), client_cert))
                .await
                .expect("client finished in time");
            let server = tokio::time::timeout(limit, server)
                .await
                .expect("server finished in time")
                .expect("server task did not panic");
            (client, server)
        }

        #[tokio::test]
        async fn client_cert_from_our_ca_identifies_the_user() {
            let dir = tempfile::tempdir().expect("tempdir");
            let pki = Pki::load_or_create(dir.path(), &[]).expect("pki");
            let cert = pki
                .issue_client_cert("rudder-admin", &[SYSTEM_MASTERS, "extra"])
                .expect("issue");
            let (client, server) = handshake(&pki, Some(cert)).await;
            assert_eq!(client.expect("client"), b"hello");
            let (peer, alpn) = server.expect("server handshake");
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
            let peer = peer.expect("server sees the client certificate");
            let user = user_from_client_cert(&peer).expect("user");
            assert_eq!(user.name, "rudder-admin");
            assert_eq!(user.groups, [SYSTEM_MASTERS, "extra", SYSTEM_AUTHENTICATED]);
            let (auth, _) = authenticator();
            let who = auth.authenticate(Some(&peer), None).expect("ok").expect("user");
            assert!(who.in_group(SYSTEM_MASTERS));
        }

        #[tokio::test]
        async fn client_cert_from_another_ca_fails_the_handshake() {
            let dir = tempfile::tempdir().expect("tempdir");
            let pki = Pki::load_or_create(&dir.path().join("ours"), &[]).expect("pki");
            let other = Pki::load_or_create(&dir.path().join("theirs"), &[]).expect("pki");
            let cert = other
                .issue_client_cert("rudder-admin", &[SYSTEM_MASTERS])
                .expect("issue");
            let (client, server) = handshake(&pki, Some(cert)).await;
            let err = server.expect_err("server rejects the foreign certificate");
            assert!(err.to_string().to_lowercase().contains("cert"), "{err}");
            // Under TLS 1.3 the client learns of the rejection on its first read.
            assert!(client.is_err(), "client must not get data: {client:?}");
        }

        #[tokio::test]
        async fn client_without_cert_connects_anonymously() {
            let dir = tempfile::tempdir().expect("tempdir");
            let pki = Pki::load_or_create(dir.path(), &[]).expect("pki");
            let (client, server) = handshake(&pki, None).await;
            assert_eq!(client.expect("client"), b"hello");
            let (peer, _) = server.expect("server handshake");
            assert_eq!(peer, None);
            let (auth, _) = authenticator();
            assert_eq!(auth.authenticate(peer.as_deref(), None).expect("ok"), None);
        }
    }
}
