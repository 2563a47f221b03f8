//! Writes a directory of files the way the kubelet updates a mounted Secret: the files live
//! in a timestamped directory, `..data` is a symlink to it swapped by an atomic rename, and
//! each visible file is a symlink through `..data`. Readers never see a half-written set.

use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Replaces the contents of `dir` with `files` (name, content) atomically.
///
/// # Errors
/// Any I/O error; the previous contents stay visible when one happens.
pub fn write_atomic(dir: &Path, files: &[(&str, &[u8])]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let stamp = jiff::Timestamp::now().as_nanosecond();
    let version = format!("..{stamp}");
    let version_dir = dir.join(&version);
    std::fs::create_dir(&version_dir)?;
    for (name, content) in files {
        write_private(&version_dir.join(name), content)?;
    }

    // Swap `..data` to the new version in one rename.
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    symlink(&version, &tmp)?;
    let old = std::fs::read_link(dir.join(DATA)).ok();
    std::fs::rename(&tmp, dir.join(DATA))?;

    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA).join(name), &link)?;
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != version.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn write_private(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn files_are_readable_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), &[("username", b"u1"), ("password", b"p1")]).unwrap();
        assert_eq!(read(dir.path(), "username"), "u1");
        assert!(
            std::fs::symlink_metadata(dir.path().join("password"))
                .unwrap()
                .is_symlink()
        );
    }

    #[test]
    fn a_second_write_replaces_all_files_and_removes_the_old_version() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), &[("username", b"u1"), ("password", b"p1")]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        write_atomic(dir.path(), &[("username", b"u2"), ("password", b"p2")]).unwrap();
        assert_eq!(read(dir.path(), "password"), "p2");
        let versions = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                let n = n.to_string_lossy();
                n.starts_with("..") && n != DATA
            })
            .count();
        assert_eq!(versions, 1);
    }

    #[test]
    fn written_files_are_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), &[("password", b"p")]).unwrap();
        let mode = std::fs::metadata(dir.path().join("password"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }
}
