//! A model's deployment tree: one directory per version and a `current` symlink naming the
//! stable one (`<deploy_dir>/1.0.1/`, `current -> 1.0.1`). Every change of the link is atomic
//! (a new link under a temporary name, then `rename` over `current`), so a replica or the
//! gateway reading it sees the old or the new version, never none. The previous version is
//! recorded in `.previous` for `rollback`. Nothing here needs root.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub const CURRENT: &str = "current";
pub const PREVIOUS: &str = ".previous";

/// The version `current` points to.
pub fn current(dir: &Path) -> Result<String, String> {
    let link = dir.join(CURRENT);
    let target = fs::read_link(&link)
        .map_err(|e| format!("cannot read the `current` link in {}: {e}", dir.display()))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} points to {target:?}, not a version", link.display()))?
        .to_owned();
    if !dir.join(&name).is_dir() {
        return Err(format!(
            "{} points to {name:?}, which is not a version directory (dangling link)",
            link.display()
        ));
    }
    Ok(name)
}

/// The version recorded as the one before `current`.
pub fn previous(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join(PREVIOUS))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// One version directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub name: String,
    pub bytes: u64,
    pub modified: Option<SystemTime>,
    pub current: bool,
    pub previous: bool,
}

/// Version directories, oldest first (by modification time, then name).
pub fn list(dir: &Path) -> Result<Vec<VersionInfo>, String> {
    let cur = current(dir).ok();
    let prev = previous(dir);
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !meta.is_dir() || name.starts_with('.') {
            continue;
        }
        out.push(VersionInfo {
            bytes: dir_size(&entry.path()),
            modified: meta.modified().ok(),
            current: cur.as_deref() == Some(name.as_str()),
            previous: prev.as_deref() == Some(name.as_str()),
            name,
        });
    }
    out.sort_by(|a, b| {
        a.modified
            .cmp(&b.modified)
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(out)
}

fn dir_size(p: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(p) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match fs::symlink_metadata(e.path()) {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn check_version_dir(dir: &Path, version: &str) -> Result<PathBuf, String> {
    if version.is_empty()
        || version.starts_with('.')
        || version == CURRENT
        || version.contains('/')
        || version.contains("..")
    {
        return Err(format!("{version:?} is not a version name"));
    }
    let path = dir.join(version);
    let meta = fs::symlink_metadata(&path)
        .map_err(|_| format!("version {version:?} does not exist in {}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", path.display()));
    }
    let empty = fs::read_dir(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .next()
        .is_none();
    if empty {
        return Err(format!(
            "version {version:?} is empty: refusing to make it current"
        ));
    }
    Ok(path)
}

/// Points `current` at `version` atomically and records the old one as previous.
/// Returns the previous version.
pub fn switch(dir: &Path, version: &str) -> Result<Option<String>, String> {
    check_version_dir(dir, version)?;
    let old = current(dir).ok();
    if old.as_deref() == Some(version) {
        return Ok(old);
    }
    let tmp = dir.join(format!(".current.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    // A relative target keeps the tree movable.
    std::os::unix::fs::symlink(version, &tmp)
        .map_err(|e| format!("cannot create a link in {}: {e}", dir.display()))?;
    fs::rename(&tmp, dir.join(CURRENT)).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot replace the `current` link: {e}")
    })?;
    if let Some(old) = &old {
        write_atomic(&dir.join(PREVIOUS), old.as_bytes())?;
    }
    Ok(old)
}

/// Switches back to the recorded previous version.
pub fn rollback(dir: &Path) -> Result<String, String> {
    let prev = previous(dir).ok_or_else(|| {
        format!(
            "no previous version recorded in {}",
            dir.join(PREVIOUS).display()
        )
    })?;
    switch(dir, &prev)?;
    Ok(prev)
}

/// Deletes old versions, keeping the `keep` newest plus current, previous, the canary and any
/// pinned ones. Returns what was deleted.
pub fn cleanup(
    dir: &Path,
    keep: usize,
    canary: Option<&str>,
    pinned: &[String],
) -> Result<Vec<String>, String> {
    let all = list(dir)?;
    let n = all.len();
    let mut removed = Vec::new();
    for (i, v) in all.iter().enumerate() {
        let newest = i + keep >= n;
        let protected = v.current
            || v.previous
            || canary == Some(v.name.as_str())
            || pinned.iter().any(|p| p == &v.name);
        if newest || protected {
            continue;
        }
        fs::remove_dir_all(dir.join(&v.name))
            .map_err(|e| format!("cannot delete {}: {e}", v.name))?;
        removed.push(v.name.clone());
    }
    Ok(removed)
}

/// Problems with the tree: a missing, dangling or wrong `current`, a `.previous` naming a
/// missing version, dangling links, expected versions that are missing.
pub fn verify(dir: &Path, expected: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    if !dir.is_dir() {
        return vec![format!("{} is not a directory", dir.display())];
    }
    let link = dir.join(CURRENT);
    match fs::symlink_metadata(&link) {
        Err(_) => problems.push(format!("{} is missing", link.display())),
        Ok(m) if !m.file_type().is_symlink() => {
            problems.push(format!("{} is not a symlink", link.display()));
        }
        Ok(_) => {
            if let Err(e) = current(dir).and_then(|v| check_version_dir(dir, &v).map(|_| v)) {
                problems.push(e);
            }
        }
    }
    if let Some(prev) = previous(dir) {
        if !dir.join(&prev).is_dir() {
            problems.push(format!("{PREVIOUS} names {prev:?}, which is missing"));
        }
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let is_link = fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink());
            if is_link && fs::metadata(&p).is_err() {
                problems.push(format!("{} is a dangling link", p.display()));
            }
        }
    }
    for v in expected {
        if !dir.join(v).is_dir() {
            problems.push(format!("version {v:?} is configured but missing"));
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, data).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A temporary deployment tree with the given versions (each holding one file).
    pub(crate) fn tree(versions: &[&str], current_to: Option<&str>) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gateway-versions-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::create_dir_all(&dir).unwrap();
        for v in versions {
            fs::create_dir_all(dir.join(v)).unwrap();
            fs::write(dir.join(v).join("config.json"), b"{}").unwrap();
        }
        if let Some(c) = current_to {
            std::os::unix::fs::symlink(c, dir.join(CURRENT)).unwrap();
        }
        dir
    }

    #[test]
    fn switch_is_atomic_records_previous_and_refuses_bad_targets() {
        let dir = tree(&["1.0.0", "1.0.1"], Some("1.0.0"));
        fs::create_dir_all(dir.join("2.0.0-empty")).unwrap();
        assert_eq!(current(&dir).unwrap(), "1.0.0");
        assert_eq!(switch(&dir, "1.0.1").unwrap().as_deref(), Some("1.0.0"));
        assert_eq!(current(&dir).unwrap(), "1.0.1");
        assert_eq!(previous(&dir).as_deref(), Some("1.0.0"));
        assert!(switch(&dir, "9.9.9")
            .unwrap_err()
            .contains("does not exist"));
        assert!(switch(&dir, "2.0.0-empty").unwrap_err().contains("empty"));
        assert!(switch(&dir, "../etc").is_err());
        assert_eq!(current(&dir).unwrap(), "1.0.1", "a refusal changes nothing");
        assert_eq!(rollback(&dir).unwrap(), "1.0.0");
        assert_eq!(current(&dir).unwrap(), "1.0.0");
        assert_eq!(previous(&dir).as_deref(), Some("1.0.1"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cleanup_keeps_current_previous_canary_and_pins() {
        let dir = tree(&["1", "2", "3", "4", "5", "6"], Some("1"));
        switch(&dir, "2").unwrap(); // current 2, previous 1
        let removed = cleanup(&dir, 1, Some("3"), &["4".to_owned()]).unwrap();
        assert_eq!(removed, vec!["5".to_owned()]);
        let left: Vec<String> = list(&dir).unwrap().into_iter().map(|v| v.name).collect();
        for v in ["1", "2", "3", "4", "6"] {
            assert!(left.contains(&v.to_owned()), "{v} deleted: {left:?}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn verify_reports_dangling_and_missing() {
        let dir = tree(&["1"], Some("1"));
        assert!(verify(&dir, &["1".to_owned()]).is_empty());
        std::os::unix::fs::symlink("nowhere", dir.join("stray")).unwrap();
        fs::write(dir.join(PREVIOUS), "0.9").unwrap();
        let p = verify(&dir, &["1".to_owned(), "2".to_owned()]);
        assert_eq!(p.len(), 3, "{p:?}");
        fs::remove_file(dir.join(CURRENT)).unwrap();
        std::os::unix::fs::symlink("gone", dir.join(CURRENT)).unwrap();
        assert!(verify(&dir, &[]).iter().any(|p| p.contains("dangling")));
        assert!(current(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
