//! Key and certificate files: private directories, atomic writes with the mode set from the
//! first byte.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use super::PkiError;

pub(super) fn exists(path: &Path) -> Result<bool, PkiError> {
    path.try_exists().map_err(PkiError::io(path, "checking"))
}

/// New directories get 0700: they hold private keys. An existing directory is left as the
/// operator set it up.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(PkiError::io(dir, "creating directory"))
}

/// Writes through a temporary file and rename so readers never see half a key, and so the
/// file has `mode` from its first byte (no window where a key is world-readable).
pub(super) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let file_name = path.file_name().ok_or_else(|| PkiError::Io {
        path: path.to_path_buf(),
        action: "writing",
        source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(PkiError::io(path, "writing"))
}
