//! Plugin state on disk (`[server] state_dir`): each route's plugins' last snapshots, so a
//! restarted server (or one that crashed) starts them where they were.
//!
//! A snapshot is saved as `STATE_DIR/ROUTE/PLUGIN.state`, written to a temporary file and renamed
//! over the old one, so a crash leaves the old state or the new one, never half of one. Writing
//! happens on a thread of its own: the route's thread only hands the bytes over (the newest
//! snapshot of a plugin replaces one not yet written, so at most one waits per plugin).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use super::runtime::MAX_SNAPSHOT_BYTES;

/// Where plugins' snapshots are kept across restarts.
pub struct StateStore {
    dir: PathBuf,
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// Snapshots handed over and not written yet, by file.
type Pending = HashMap<PathBuf, Bytes>;

impl StateStore {
    /// Opens (creating it if needed) `dir` and starts the thread that writes into it, which lives
    /// as long as the process (the server keeps one store from start to exit).
    pub fn open(dir: &Path) -> std::io::Result<Arc<StateStore>> {
        std::fs::create_dir_all(dir)?;
        let store = Arc::new(StateStore {
            dir: dir.to_owned(),
            pending: Mutex::default(),
            wake: Condvar::new(),
        });
        let writer = Arc::clone(&store);
        std::thread::Builder::new()
            .name("plugin-state".into())
            .spawn(move || writer.write_pending())?;
        Ok(store)
    }

    /// Where the state of `plugin` on `route` is kept; `None` for a name that is not a plain file
    /// name (config checks route and plugin names, so this is a second lock on the door).
    fn path(&self, route: &str, plugin: &str) -> Option<PathBuf> {
        let plain = |name: &str| {
            !name.is_empty()
                && !name.starts_with('.')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        (plain(route) && plain(plugin))
            .then(|| self.dir.join(route).join(format!("{plugin}.state")))
    }

    /// Hands `snapshot` to the writer (shared, not copied); it replaces one of the same plugin not
    /// yet written.
    pub fn save(&self, route: &str, plugin: &str, snapshot: Bytes) {
        let Some(path) = self.path(route, plugin) else {
            return;
        };
        self.lock().insert(path, snapshot);
        self.wake.notify_one();
    }

    /// The state saved for `plugin` on `route`, if there is one; a file that cannot be read or is
    /// larger than a snapshot may be is logged and ignored (the plugin starts afresh).
    pub fn load(&self, route: &str, plugin: &str) -> Option<Bytes> {
        let path = self.path(route, plugin)?;
        if let Some(pending) = self.lock().get(&path) {
            return Some(pending.clone());
        }
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!(route, plugin, "cannot read {}: {err}", path.display());
                return None;
            }
        };
        let mut bytes = Vec::new();
        let limit = MAX_SNAPSHOT_BYTES as u64 + 1;
        match file.take(limit).read_to_end(&mut bytes) {
            Ok(_) if bytes.len() > MAX_SNAPSHOT_BYTES => {
                tracing::warn!(
                    route,
                    plugin,
                    "{} is larger than a snapshot may be ({MAX_SNAPSHOT_BYTES} bytes); ignored",
                    path.display()
                );
                None
            }
            Ok(_) => Some(Bytes::from(bytes)),
            Err(err) => {
                tracing::warn!(route, plugin, "cannot read {}: {err}", path.display());
                None
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Plain data: still consistent after a panic elsewhere.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: writes what is handed over, for good.
    fn write_pending(&self) {
        loop {
            let mut pending = self.lock();
            while pending.is_empty() {
                pending = self.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
            }
            let batch: Vec<(PathBuf, Bytes)> = pending.drain().collect();
            drop(pending);
            for (path, bytes) in batch {
                if let Err(err) = write_atomically(&path, &bytes) {
                    tracing::warn!("cannot save plugin state to {}: {err}", path.display());
                }
            }
        }
    }
}

/// Writes `bytes` to a file beside `path` and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("state.new");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_is_there_for_the_next_store_and_odd_names_are_refused() {
        let dir = std::env::temp_dir().join(format!("wasmcast-state-{}", std::process::id()));
        let store = StateStore::open(&dir).unwrap();
        store.save("cam", "counter", Bytes::from_static(b"{\"count\":7}"));
        assert_eq!(store.load("cam", "counter").unwrap(), &b"{\"count\":7}"[..]);
        store.save("../etc", "passwd", Bytes::from_static(b"no"));
        assert!(store.load("../etc", "passwd").is_none());
        let file = dir.join("cam/counter.state");
        for _ in 0..100 {
            if file.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let reopened = StateStore::open(&dir).unwrap();
        assert_eq!(
            reopened.load("cam", "counter").unwrap(),
            &b"{\"count\":7}"[..]
        );
        assert!(reopened.load("cam", "other").is_none());
        std::fs::write(&file, vec![0u8; MAX_SNAPSHOT_BYTES + 1]).unwrap();
        assert!(reopened.load("cam", "counter").is_none(), "too large");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
