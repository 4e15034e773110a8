//! A container's mounts: the pod's volumes materialised under the pod's directory (or a
//! host path), bind-mounted by the shim into the container's private mount namespace.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, ProjectedVolumeSource, Volume};

use super::shim::BindMount;

/// Where the ServiceAccount token, CA and namespace are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volumeMount {mount}: no volume named {mount} in the pod")]
    NoSuchVolume { mount: String },
    #[error("volume {volume}: {what} volumes are not supported by this node agent")]
    Unsupported { volume: String, what: &'static str },
    #[error("volume {volume}: {source_kind} \"{name}\" not found")]
    SourceNotFound {
        volume: String,
        source_kind: &'static str,
        name: String,
    },
    #[error("volume {volume}: persistentvolumeclaim \"{claim}\" is not bound to a volume yet")]
    ClaimNotBound { volume: String, claim: String },
    #[error("volume {volume}: hostPath {path} does not exist (type {kind})")]
    HostPathMissing { volume: String, path: String, kind: String },
    #[error("volume {volume}: {path}: {source}")]
    Io {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// ConfigMap and Secret data a pod's volumes use, fetched by the caller.
#[derive(Debug, Default, Clone)]
pub struct VolumeData {
    pub config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// The ServiceAccount directory's files (`token`, `ca.crt`, `namespace`), when mounted.
    pub service_account: Option<BTreeMap<String, Vec<u8>>>,
    /// The host directory of each bound claim the pod uses, by claim name.
    pub claims: BTreeMap<String, PathBuf>,
}

/// The ConfigMaps and Secrets the pod's volumes name.
pub fn wanted(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(cm) = &v.config_map {
            cms.push(cm.name.clone());
        }
        if let Some(s) = &v.secret {
            secrets.extend(s.secret_name.clone());
        }
    }
    (cms, secrets)
}

/// The host directory of each claim the pod uses that is bound (claims not yet bound are
/// left out; mounting them fails until they are). The directory is the volume's `local`
/// or `hostPath` path.
pub async fn claim_dirs(client: &kube::Client, pod: &Pod) -> BTreeMap<String, PathBuf> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let claims: kube::Api<PersistentVolumeClaim> = kube::Api::namespaced(client.clone(), &ns);
    let volumes: kube::Api<PersistentVolume> = kube::Api::all(client.clone());
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(name) = v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()) else {
            continue;
        };
        let Ok(claim) = claims.get(&name).await else {
            continue;
        };
        let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let Some(volume) = claim
            .spec
            .and_then(|s| s.volume_name)
            .filter(|v| bound && !v.is_empty())
        else {
            continue;
        };
        let Ok(pv) = volumes.get(&volume).await else {
            continue;
        };
        let spec = pv.spec.unwrap_or_default();
        if let Some(path) = spec.local.map(|l| l.path).or(spec.host_path.map(|h| h.path)) {
            out.insert(name, PathBuf::from(path));
        }
    }
    out
}

/// Maps host paths for simulated nodes: a hostPath under a mapped prefix is served from
/// the mapped directory (identity on a real node).
pub fn map_host_path(map: &[(PathBuf, PathBuf)], path: &Path) -> PathBuf {
    for (from, to) in map {
        if let Ok(rest) = path.strip_prefix(from) {
            return if rest.as_os_str().is_empty() {
                to.clone()
            } else {
                to.join(rest)
            };
        }
    }
    path.to_owned()
}

fn io(volume: &str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let (volume, path) = (volume.to_owned(), path.to_owned());
    move |source| VolumeError::Io { volume, path, source }
}

/// Writes `files` into a fresh `dir` (keys, or `items` mapping keys to paths), with mode.
fn write_files(
    volume: &str,
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: i32,
) -> Result<(), VolumeError> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(io(volume, dir))?;
    let entries: Vec<(String, String, i32)> = match items {
        Some(items) => items
            .iter()
            .filter(|i| data.contains_key(&i.key))
            .map(|i| (i.key.clone(), i.path.clone(), i.mode.unwrap_or(mode)))
            .collect(),
        None => data.keys().map(|k| (k.clone(), k.clone(), mode)).collect(),
    };
    for (key, rel, mode) in entries {
        if rel.split('/').any(|p| p == "..") {
            continue;
        }
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(volume, parent))?;
        }
        fs::write(&path, &data[&key]).map_err(io(volume, &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode as u32 & 0o7777)).map_err(io(volume, &path))?;
    }
    Ok(())
}

/// Materialises one volume; returns the host path to bind.
fn materialise(
    v: &Volume,
    pod_dir: &Path,
    data: &VolumeData,
    host_map: &[(PathBuf, PathBuf)],
) -> Result<PathBuf, VolumeError> {
    let name = &v.name;
    if v.empty_dir.is_some() {
        let dir = pod_dir.join("volumes/empty-dir").join(name);
        fs::create_dir_all(&dir).map_err(io(name, &dir))?;
        return Ok(dir);
    }
    if let Some(cm) = &v.config_map {
        let dir = pod_dir.join("volumes/configmap").join(name);
        match data.config_maps.get(&cm.name) {
            Some(files) => write_files(name, &dir, files, cm.items.as_ref(), cm.default_mode.unwrap_or(0o644))?,
            None if cm.optional == Some(true) => fs::create_dir_all(&dir).map_err(io(name, &dir))?,
            None => {
                return Err(VolumeError::SourceNotFound {
                    volume: name.clone(),
                    source_kind: "configmap",
                    name: cm.name.clone(),
                });
            }
        }
        return Ok(dir);
    }
    if let Some(s) = &v.secret {
        let dir = pod_dir.join("volumes/secret").join(name);
        let secret_name = s.secret_name.clone().unwrap_or_default();
        match data.secrets.get(&secret_name) {
            Some(files) => write_files(name, &dir, files, s.items.as_ref(), s.default_mode.unwrap_or(0o644))?,
            None if s.optional == Some(true) => fs::create_dir_all(&dir).map_err(io(name, &dir))?,
            None => {
                return Err(VolumeError::SourceNotFound {
                    volume: name.clone(),
                    source_kind: "secret",
                    name: secret_name,
                });
            }
        }
        return Ok(dir);
    }
    if let Some(hp) = &v.host_path {
        let path = map_host_path(host_map, Path::new(&hp.path));
        let kind = hp.type_.clone().unwrap_or_default();
        match kind.as_str() {
            "DirectoryOrCreate" => fs::create_dir_all(&path).map_err(io(name, &path))?,
            "FileOrCreate" if !path.exists() => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io(name, parent))?;
                }
                fs::File::create(&path).map_err(io(name, &path))?;
            }
            "" | "FileOrCreate" => {}
            _ if !path.exists() => {
                return Err(VolumeError::HostPathMissing {
                    volume: name.clone(),
                    path: hp.path.clone(),
                    kind,
                });
            }
            _ => {}
        }
        return Ok(path);
    }
    if let Some(pvc) = &v.persistent_volume_claim {
        let dir = data
            .claims
            .get(&pvc.claim_name)
            .ok_or_else(|| VolumeError::ClaimNotBound {
                volume: name.clone(),
                claim: pvc.claim_name.clone(),
            })?;
        let dir = map_host_path(host_map, dir);
        // A local-path volume's directory is made on first use (the provisioner only
        // names it); an existing one, with its data, is used as it is.
        fs::create_dir_all(&dir).map_err(io(name, &dir))?;
        return Ok(dir);
    }
    if let Some(projected) = v.projected.as_ref().filter(|p| is_api_access(p)) {
        // The ServiceAccount admission plugin's `kube-api-access-*` volume: the token,
        // CA and namespace the agent already fetched for the pod.
        let dir = pod_dir.join("volumes/projected").join(name);
        let files = data
            .service_account
            .as_ref()
            .ok_or_else(|| VolumeError::SourceNotFound {
                volume: name.clone(),
                source_kind: "serviceaccount token for",
                name: "the pod's ServiceAccount".into(),
            })?;
        write_files(name, &dir, files, None, projected.default_mode.unwrap_or(0o644))?;
        return Ok(dir);
    }
    let what = if v.projected.is_some() {
        "projected"
    } else if v.downward_api.is_some() {
        "downwardAPI"
    } else if v.persistent_volume_claim.is_some() {
        "persistentVolumeClaim"
    } else {
        "this kind of"
    };
    Err(VolumeError::Unsupported {
        volume: name.clone(),
        what,
    })
}

/// A projected volume of exactly what the ServiceAccount directory holds: a token at
/// `token`, and otherwise only the CA ConfigMap and the namespace.
fn is_api_access(p: &ProjectedVolumeSource) -> bool {
    let sources = p.sources.as_deref().unwrap_or_default();
    sources
        .iter()
        .any(|s| s.service_account_token.as_ref().is_some_and(|t| t.path == "token"))
        && sources.iter().all(|s| {
            s.service_account_token.is_some()
                || s.config_map.as_ref().is_some_and(|c| c.name == "kube-root-ca.crt")
                || s.downward_api.is_some()
        })
}

/// The bind mounts for `container`: its volumeMounts, then the ServiceAccount directory.
pub fn mounts(
    pod: &Pod,
    container: &Container,
    pod_dir: &Path,
    data: &VolumeData,
    host_map: &[(PathBuf, PathBuf)],
) -> Result<Vec<BindMount>, VolumeError> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| VolumeError::NoSuchVolume { mount: m.name.clone() })?;
        let mut source = materialise(v, pod_dir, data, host_map)?;
        if let Some(sub) = m
            .sub_path
            .as_deref()
            .filter(|s| !s.is_empty() && !s.split('/').any(|p| p == ".."))
        {
            source = source.join(sub);
            if !source.exists() {
                fs::create_dir_all(&source).map_err(io(&v.name, &source))?;
            }
        }
        out.push(BindMount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: m.read_only == Some(true),
        });
    }
    if let Some(files) = &data.service_account {
        let dir = pod_dir.join("volumes/serviceaccount");
        write_files("kube-api-access", &dir, files, None, 0o644)?;
        if !out.iter().any(|m| m.target == Path::new(SERVICE_ACCOUNT_DIR)) {
            out.push(BindMount {
                source: dir,
                target: SERVICE_ACCOUNT_DIR.into(),
                read_only: true,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_paths_map_by_prefix() {
        let map = vec![(PathBuf::from("/sys/fs/bpf"), PathBuf::from("/run/rudder/n1/bpf"))];
        assert_eq!(
            map_host_path(&map, Path::new("/sys/fs/bpf")),
            Path::new("/run/rudder/n1/bpf")
        );
        assert_eq!(
            map_host_path(&map, Path::new("/sys/fs/bpf/rudder")),
            Path::new("/run/rudder/n1/bpf/rudder")
        );
        assert_eq!(
            map_host_path(&map, Path::new("/sys/fs/bpffs")),
            Path::new("/sys/fs/bpffs")
        );
    }

    #[test]
    fn the_api_access_volume_holds_the_service_account_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut spec = json!({"containers": [{"name": "c"}]});
        crate::apiserver::admission::service_account::mount_token(&mut spec, "x1y2z");
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).expect("pod");
        let c = pod.spec.as_ref().expect("spec").containers[0].clone();
        let mut data = VolumeData::default();
        let m = mounts(&pod, &c, dir.path(), &data, &[]);
        assert!(m.unwrap_err().to_string().contains("serviceaccount token"));
        data.service_account = Some(BTreeMap::from([
            ("token".into(), b"t".to_vec()),
            ("ca.crt".into(), b"ca".to_vec()),
            ("namespace".into(), b"d".to_vec()),
        ]));
        let m = mounts(&pod, &c, dir.path(), &data, &[]).expect("mounts");
        assert_eq!(m.len(), 1, "mounted once, not again by the agent's own fallback");
        assert_eq!(m[0].target, Path::new(SERVICE_ACCOUNT_DIR));
        assert!(m[0].read_only);
        assert_eq!(fs::read(m[0].source.join("token")).expect("token"), b"t");
        assert_eq!(fs::read(m[0].source.join("namespace")).expect("ns"), b"d");
    }

    #[test]
    fn configmap_secret_and_empty_dir_volumes() {
        let dir = tempfile::tempdir().expect("tmp");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d"},
            "spec": {"containers": [], "volumes": [
                {"name": "cfg", "configMap": {"name": "settings", "items": [{"key": "a", "path": "sub/a.txt"}]}},
                {"name": "creds", "secret": {"secretName": "s", "defaultMode": 0o400}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "pvc", "persistentVolumeClaim": {"claimName": "x"}},
            ]},
        }))
        .expect("pod");
        let c: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [
            {"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "creds", "mountPath": "/etc/creds", "readOnly": true}, {"name": "scratch", "mountPath": "/data"},
        ]}))
        .expect("container");
        let mut data = VolumeData::default();
        data.config_maps.insert(
            "settings".into(),
            BTreeMap::from([("a".into(), b"A".to_vec()), ("b".into(), b"B".to_vec())]),
        );
        data.secrets
            .insert("s".into(), BTreeMap::from([("pw".into(), b"hunter2".to_vec())]));
        let m = mounts(&pod, &c, dir.path(), &data, &[]).expect("mounts");
        assert_eq!(m.len(), 3);
        assert_eq!(fs::read(m[0].source.join("sub/a.txt")).expect("a"), b"A");
        assert!(!m[0].source.join("b").exists(), "items select keys");
        let pw = m[1].source.join("pw");
        assert_eq!(fs::metadata(&pw).expect("pw").permissions().mode() & 0o777, 0o400);
        assert!(m[1].read_only);
        assert!(m[2].source.is_dir());
        let c: Container =
            serde_json::from_value(json!({"name": "c", "volumeMounts": [{"name": "pvc", "mountPath": "/x"}]}))
                .expect("c");
        assert!(
            mounts(&pod, &c, dir.path(), &data, &[])
                .unwrap_err()
                .to_string()
                .contains("persistentvolumeclaim \"x\" is not bound")
        );
        data.claims.insert("x".into(), dir.path().join("pv/pvc-1"));
        let m = mounts(&pod, &c, dir.path(), &data, &[]).expect("a bound claim mounts");
        assert!(m[0].source.is_dir(), "the volume's directory is made on first use");
    }
}
