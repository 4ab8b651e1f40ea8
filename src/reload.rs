//! Change detection for the config file and every file it references (`${file:…}` secrets,
//! `tls.ca_file`). Polls file metadata, following symlinks, so Kubernetes' `..data` symlink
//! swap of a Secret volume is seen as a change (the resolved inode changes), and so are editors
//! that replace a file by rename. A few `stat` calls a second cost nothing measurable, work on
//! every filesystem (including the overlay and tmpfs mounts Kubernetes uses) and need no
//! platform-specific watcher.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// How often files are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        #[cfg(unix)]
        inode: {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        },
    })
}

/// Remembers what the watched files looked like at the last load.
#[derive(Debug, Default)]
pub struct Watcher {
    files: Vec<(PathBuf, Option<Stamp>)>,
}

impl Watcher {
    /// Watch `paths` from their current state.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut watcher = Watcher::default();
        watcher.reset(paths);
        watcher
    }

    /// Start over with a new set of files (after a reload the set may differ).
    pub fn reset(&mut self, paths: impl IntoIterator<Item = PathBuf>) {
        self.files = paths
            .into_iter()
            .map(|p| {
                let s = stamp(&p);
                (p, s)
            })
            .collect();
    }

    /// True when any file changed, appeared or disappeared since the last call.
    pub fn changed(&mut self) -> bool {
        let mut changed = false;
        for (path, last) in &mut self.files {
            let now = stamp(path);
            if now != *last {
                *last = now;
                changed = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_writes_and_symlink_swaps() {
        let dir = std::env::temp_dir().join(format!("outpost-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("v1")).unwrap();
        std::fs::create_dir_all(dir.join("v2")).unwrap();
        std::fs::write(dir.join("v1/key"), "one").unwrap();
        std::fs::write(dir.join("v2/key"), "two").unwrap();
        // Kubernetes layout: key -> ..data/key, ..data -> v1
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
            std::os::unix::fs::symlink("..data/key", dir.join("key")).unwrap();
            let mut w = Watcher::new([dir.join("key")]);
            assert!(!w.changed());
            std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
            assert!(w.changed(), "symlink swap is a change");
            assert!(!w.changed());
            std::fs::remove_file(dir.join("v2/key")).unwrap();
            assert!(w.changed(), "a vanished file is a change");
        }
        std::fs::write(dir.join("plain"), "a").unwrap();
        let mut w = Watcher::new([dir.join("plain")]);
        std::fs::write(dir.join("plain"), "ab").unwrap();
        assert!(w.changed());
        std::fs::remove_dir_all(&dir).ok();
    }
}
