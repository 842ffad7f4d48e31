//! Where checkpoints are kept: the [`CheckpointStore`] trait and its default, a local directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Durable storage for checkpoints. A checkpoint `id` is a set of parts (one per worker) and a
/// manifest; it counts only once its manifest is written, and the manifest is written only
/// after every part is durable.
///
/// The default is [`LocalDirStore`]; an object store can implement the same four calls (its
/// puts are atomic by nature).
pub trait CheckpointStore: Send + Sync + 'static {
    /// Durably writes part `worker` of checkpoint `id`, replacing nothing that counts: a
    /// crash during the write leaves either the whole part or none.
    fn write_part(&self, id: u64, worker: usize, bytes: &[u8]) -> io::Result<()>;

    /// Durably writes the manifest of checkpoint `id` (after all its parts): the checkpoint
    /// counts from now on.
    fn commit(&self, id: u64, manifest: &[u8]) -> io::Result<()>;

    /// The ids of the checkpoints with a manifest, newest first.
    fn committed(&self) -> io::Result<Vec<u64>>;

    /// Reads the manifest of checkpoint `id`.
    fn read_manifest(&self, id: u64) -> io::Result<Vec<u8>>;

    /// Reads part `worker` of checkpoint `id`.
    fn read_part(&self, id: u64, worker: usize) -> io::Result<Vec<u8>>;

    /// Removes every checkpoint older than the `keep` newest committed ones, and unfinished
    /// ones older than the newest committed one.
    fn prune(&self, keep: usize) -> io::Result<()>;

    /// Removes every checkpoint: the job finished, a new run starts from the beginning.
    fn clear(&self) -> io::Result<()>;

    /// Where the store is, for messages.
    fn describe(&self) -> String;
}

/// Checkpoints in a local directory (or any file system every process of the job mounts at the
/// same path): `DIR/chk-0000000042/part-3` and `DIR/chk-0000000042/MANIFEST`. Every file is
/// written beside its final name, synced, renamed into place, and its directory synced, so
/// that a crash leaves whole files or none.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    dir: PathBuf,
}

impl LocalDirStore {
    /// A store in `dir`, created if it does not exist.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        if !fs::metadata(&dir)?.is_dir() {
            return Err(io::Error::other(format!("{} is not a directory", dir.display())));
        }
        Ok(LocalDirStore { dir })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Claims the store for one instance of the job: an exclusive lock on `DIR/LOCK`, held
    /// until the returned guard is dropped (or the process ends, however it ends). A second
    /// instance started while the first runs gets an error saying so, instead of writing the
    /// same checkpoints and outputs. Take it in one process of a job (process 0).
    pub fn lock(&self) -> io::Result<File> {
        let path = self.dir.join("LOCK");
        let file = File::options().create(true).truncate(false).write(true).open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another instance of this job is running with checkpoints in {} (it holds {}): stop it first, \
                     or give this one its own checkpoint directory",
                    self.dir.display(),
                    path.display()
                ),
            )),
            Err(fs::TryLockError::Error(error)) => Err(error),
        }
    }

    fn checkpoint_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("chk-{id:010}"))
    }

    fn ids(&self) -> io::Result<Vec<(u64, bool)>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_prefix("chk-")).and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            ids.push((id, entry.path().join("MANIFEST").is_file()));
        }
        ids.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
        Ok(ids)
    }
}

/// Writes `bytes` to `path` atomically and durably: a temporary file beside it, synced,
/// renamed, and the directory synced.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let temporary = dir.join(name);
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path)?;
    File::open(dir)?.sync_all()
}

impl CheckpointStore for LocalDirStore {
    fn write_part(&self, id: u64, worker: usize, bytes: &[u8]) -> io::Result<()> {
        let dir = self.checkpoint_dir(id);
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(format!("part-{worker}")), bytes)
    }

    fn commit(&self, id: u64, manifest: &[u8]) -> io::Result<()> {
        let dir = self.checkpoint_dir(id);
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join("MANIFEST"), manifest)?;
        File::open(&self.dir)?.sync_all()
    }

    fn committed(&self) -> io::Result<Vec<u64>> {
        Ok(self.ids()?.into_iter().filter(|(_, done)| *done).map(|(id, _)| id).collect())
    }

    fn read_manifest(&self, id: u64) -> io::Result<Vec<u8>> {
        fs::read(self.checkpoint_dir(id).join("MANIFEST"))
    }

    fn read_part(&self, id: u64, worker: usize) -> io::Result<Vec<u8>> {
        fs::read(self.checkpoint_dir(id).join(format!("part-{worker}")))
    }

    fn prune(&self, keep: usize) -> io::Result<()> {
        let ids = self.ids()?;
        let newest = ids.iter().find(|(_, done)| *done).map(|(id, _)| *id);
        let mut kept = 0;
        for (id, done) in ids {
            let remove = if done {
                kept += 1;
                kept > keep.max(1)
            } else {
                newest.is_some_and(|newest| id < newest)
            };
            if remove {
                fs::remove_dir_all(self.checkpoint_dir(id))?;
            }
        }
        Ok(())
    }

    fn clear(&self) -> io::Result<()> {
        for (id, _) in self.ids()? {
            fs::remove_dir_all(self.checkpoint_dir(id))?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_manifested_checkpoints_count_and_pruning_keeps_the_newest() {
        let dir = std::env::temp_dir().join(format!("tideline-store-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = LocalDirStore::new(&dir).unwrap();
        for id in 1..=4 {
            store.write_part(id, 0, b"part").unwrap();
            store.commit(id, b"manifest").unwrap();
        }
        store.write_part(5, 0, b"unfinished").unwrap();
        assert_eq!(store.committed().unwrap(), vec![4, 3, 2, 1]);
        store.write_part(2, 1, b"late part of an old round").unwrap();
        store.prune(2).unwrap();
        assert_eq!(store.committed().unwrap(), vec![4, 3]);
        assert_eq!(store.read_part(5, 0).unwrap(), b"unfinished", "newer than the newest committed: in progress");
        store.write_part(6, 0, b"p").unwrap();
        store.commit(6, b"m").unwrap();
        store.prune(2).unwrap();
        assert!(store.read_part(5, 0).is_err(), "an unfinished round older than the newest committed is gone");
        store.clear().unwrap();
        assert!(store.committed().unwrap().is_empty());
        let held = store.lock().unwrap();
        let refused = LocalDirStore::new(&dir).unwrap().lock().unwrap_err();
        assert!(refused.to_string().contains("another instance"), "{refused}");
        drop(held);
        LocalDirStore::new(&dir).unwrap().lock().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
