//! Plugin state on disk (`[server] state_dir`): each route's plugins' last snapshots, so a
//! restarted server (or one that crashed) starts them where they were.
//!
//! A snapshot is saved as `STATE_DIR/ROUTE/PLUGIN.state`, written to a temporary file and renamed
//! over the old one, so a crash leaves the old state or the new one, never half of one. Writing
//! happens on a thread of its own: the route's thread only hands the bytes over (the newest
//! snapshot of a plugin replaces one not yet written, so at most one waits per plugin).
//!
//! The directory is bounded: routes made from a pattern come and go under names their readers
//! and publishers choose, and each would leave its plugins' files behind for good. Past
//! [`MAX_FILES`] files or [`MAX_BYTES`] bytes, the writer removes the least recently written
//! (their plugins start afresh if their route comes back).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use super::runtime::MAX_SNAPSHOT_BYTES;

/// The most snapshot files the directory keeps.
const MAX_FILES: usize = 1024;
/// The most bytes of snapshots the directory keeps (a snapshot is at most 16 MiB).
const MAX_BYTES: u64 = 1 << 30;

/// Where plugins' snapshots are kept across restarts.
pub struct StateStore {
    dir: PathBuf,
    pending: Mutex<Pending>,
    wake: Condvar,
    limits: Limits,
}

#[derive(Clone, Copy)]
struct Limits {
    files: usize,
    bytes: u64,
}

/// The snapshot files in the directory, as the writer thread knows them: each one's size and
/// when it was written (a count, oldest lowest).
#[derive(Default)]
struct OnDisk {
    files: HashMap<PathBuf, (u64, u64)>,
    bytes: u64,
    written: u64,
}

/// Snapshots handed over and not written yet, by file.
type Pending = HashMap<PathBuf, Bytes>;

impl StateStore {
    /// Opens (creating it if needed) `dir` and starts the thread that writes into it, which lives
    /// as long as the process (the server keeps one store from start to exit).
    pub fn open(dir: &Path) -> std::io::Result<Arc<StateStore>> {
        StateStore::open_within(
            dir,
            Limits {
                files: MAX_FILES,
                bytes: MAX_BYTES,
            },
        )
    }

    fn open_within(dir: &Path, limits: Limits) -> std::io::Result<Arc<StateStore>> {
        std::fs::create_dir_all(dir)?;
        let on_disk = OnDisk::scan(dir);
        let store = Arc::new(StateStore {
            dir: dir.to_owned(),
            pending: Mutex::default(),
            wake: Condvar::new(),
            limits,
        });
        let writer = Arc::clone(&store);
        std::thread::Builder::new()
            .name("plugin-state".into())
            .spawn(move || writer.write_pending(on_disk))?;
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

    /// The writer thread: writes what is handed over, for good, keeping the directory within
    /// its limits.
    fn write_pending(&self, mut on_disk: OnDisk) {
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
                    continue;
                }
                on_disk.wrote(path.clone(), bytes.len() as u64);
                on_disk.keep_within(self.limits, &path);
            }
        }
    }
}

impl OnDisk {
    /// The `ROUTE/PLUGIN.state` files under `dir`, in the order they were last written.
    fn scan(dir: &Path) -> OnDisk {
        let mut found = Vec::new();
        for route in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            for file in std::fs::read_dir(route.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = file.path();
                let Ok(metadata) = file.metadata() else {
                    continue;
                };
                if path.extension().is_some_and(|e| e == "state") && metadata.is_file() {
                    let modified = metadata.modified().unwrap_or(std::time::UNIX_EPOCH);
                    found.push((modified, path, metadata.len()));
                }
            }
        }
        found.sort();
        let mut on_disk = OnDisk::default();
        for (_, path, size) in found {
            on_disk.wrote(path, size);
        }
        on_disk
    }

    fn wrote(&mut self, path: PathBuf, size: u64) {
        self.written += 1;
        if let Some((old, _)) = self.files.insert(path, (size, self.written)) {
            self.bytes -= old;
        }
        self.bytes += size;
    }

    /// Removes the least recently written files, never `newest`, until the rest fit `limits`.
    fn keep_within(&mut self, limits: Limits, newest: &Path) {
        while self.files.len() > limits.files || self.bytes > limits.bytes {
            let Some(oldest) = self
                .files
                .iter()
                .filter(|(path, _)| path.as_path() != newest)
                .min_by_key(|(_, (_, written))| *written)
                .map(|(path, _)| path.clone())
            else {
                return;
            };
            if let Some((size, _)) = self.files.remove(&oldest) {
                self.bytes -= size;
            }
            match std::fs::remove_file(&oldest) {
                Ok(()) => tracing::info!(
                    "removed plugin state {}, the least recently saved, to keep the state \
                     directory within {} files and {} MiB",
                    oldest.display(),
                    limits.files,
                    limits.bytes >> 20
                ),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => tracing::warn!("cannot remove {}: {err}", oldest.display()),
            }
            if let Some(route) = oldest.parent() {
                // Only removed when empty: the route's other plugins may keep theirs.
                let _ = std::fs::remove_dir(route);
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

    /// Waits until the writer thread has written `file`.
    fn written(file: &Path) {
        written_with(file, None);
    }

    /// Waits until the writer thread has written `file`, holding `content` if given.
    fn written_with(file: &Path, content: Option<&[u8]>) {
        for _ in 0..200 {
            if std::fs::read(file).is_ok_and(|read| content.is_none_or(|c| c == read)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} was not written", file.display());
    }

    /// Waits until exactly the `expected` of `routes` have a `counter` state on disk.
    fn until_kept(dir: &Path, routes: &[&str], expected: &[bool]) {
        let kept = || -> Vec<bool> {
            routes
                .iter()
                .map(|route| dir.join(format!("{route}/counter.state")).exists())
                .collect()
        };
        for _ in 0..200 {
            if kept() == expected {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(kept(), expected, "states kept of {routes:?}");
    }

    #[test]
    fn the_directory_keeps_the_most_recently_saved_states_within_its_limits() {
        let dir =
            std::env::temp_dir().join(format!("wasmcast-state-limits-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let limits = Limits {
            files: 3,
            bytes: 1000,
        };
        let store = StateStore::open_within(&dir, limits).unwrap();
        // Routes a pattern made, one after another: only the three newest keep their state.
        for i in 0..5 {
            store.save(&format!("cam-{i}"), "counter", Bytes::from(vec![1u8; 100]));
            written(&dir.join(format!("cam-{i}/counter.state")));
        }
        // Files are removed just after the write that takes the directory past its limits.
        let routes = ["cam-0", "cam-1", "cam-2", "cam-3", "cam-4"];
        until_kept(&dir, &routes, &[false, false, true, true, true]);
        assert!(
            !dir.join("cam-0").exists(),
            "an emptied route directory goes too"
        );
        // A saved state counts as new again; bytes are a limit too: with `big`, four files are
        // one too many, and without cam-3 their 1,001 bytes still are.
        store.save("cam-2", "counter", Bytes::from(vec![2u8; 100]));
        written_with(&dir.join("cam-2/counter.state"), Some(&[2u8; 100]));
        store.save("big", "counter", Bytes::from(vec![3u8; 801]));
        written(&dir.join("big/counter.state"));
        until_kept(
            &dir,
            &["cam-2", "cam-3", "cam-4", "big"],
            &[true, false, false, true],
        );
        // A reopened store finds what is on disk, ordered by when each file was written, and goes
        // on from there: within 1,000 bytes, cam-2 is the oldest to go. The two were written
        // within one tick of the file system's clock, so their times are set apart here.
        drop(store);
        let written_at = |route: &str, seconds_ago: u64| {
            let file = std::fs::File::options()
                .write(true)
                .open(dir.join(format!("{route}/counter.state")))
                .unwrap();
            let at = std::time::SystemTime::now() - std::time::Duration::from_secs(seconds_ago);
            file.set_modified(at).unwrap();
        };
        written_at("cam-2", 20);
        written_at("big", 10);
        let reopened = StateStore::open_within(&dir, limits).unwrap();
        reopened.save("late", "counter", Bytes::from(vec![4u8; 150]));
        written(&dir.join("late/counter.state"));
        until_kept(&dir, &["cam-2", "big", "late"], &[false, true, true]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
