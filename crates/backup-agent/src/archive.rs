//! Directory sets as tar archives: written in a stable order with a count
//! of files and bytes (the manifest's figures), read back to check those
//! figures, and unpacked safely (no entry may land outside the destination).
//! Blocking I/O: callers run these on blocking threads.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a directory archive holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStats {
    /// Regular files.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// The name a configured directory has inside the archive: its normal path
/// components (`/srv/data` → `srv/data`, `var/logs` → `var/logs`).
pub fn archive_name(path: &Path) -> PathBuf {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect()
}

/// Archives `dirs` into `out`; returns `out` and what went in.
pub fn write_archive<W: Write>(dirs: &[PathBuf], out: W) -> std::io::Result<(W, FileStats)> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut stats = FileStats::default();
    for dir in dirs {
        if !dir.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not a directory", dir.display()),
            ));
        }
        add_tree(&mut builder, dir, &archive_name(dir), &mut stats)?;
    }
    Ok((builder.into_inner()?, stats))
}

fn add_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    stats: &mut FileStats,
) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        if !name.as_os_str().is_empty() {
            builder.append_dir(name, path)?;
        }
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
        // A stable order: the same tree gives the same archive.
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            add_tree(builder, &entry.path(), &name.join(entry.file_name()), stats)?;
        }
    } else {
        builder.append_path_with_name(path, name)?;
        if meta.is_file() {
            stats.files += 1;
            stats.bytes += meta.len();
        }
    }
    Ok(())
}

/// Counts the regular files and bytes of an archive.
pub fn inspect_archive<R: Read>(input: R) -> std::io::Result<FileStats> {
    let mut archive = tar::Archive::new(input);
    let mut stats = FileStats::default();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            stats.files += 1;
            // Read it through: a truncated archive fails here.
            stats.bytes += std::io::copy(&mut entry, &mut std::io::sink())?;
        }
    }
    Ok(stats)
}

/// Unpacks an archive under `dest`, refusing entries that would escape it.
pub fn unpack_archive<R: Read>(input: R, dest: &Path) -> std::io::Result<FileStats> {
    std::fs::create_dir_all(dest)?;
    let mut archive = tar::Archive::new(input);
    archive.set_overwrite(true);
    let mut stats = FileStats::default();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let is_file = entry.header().entry_type().is_file();
        let size = entry.header().size()?;
        if !entry.unpack_in(dest)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "archive entry points outside the destination",
            ));
        }
        if is_file {
            stats.files += 1;
            stats.bytes += size;
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_count_and_unpack_the_same_tree() {
        let src = tempfile::tempdir().expect("tempdir");
        let a = src.path().join("artifacts");
        std::fs::create_dir_all(a.join("nested/deeper")).expect("mkdir");
        std::fs::write(a.join("one.txt"), b"hello").expect("write");
        std::fs::write(a.join("nested/two.bin"), vec![7u8; 10_000]).expect("write");
        std::fs::write(a.join("nested/deeper/three"), b"").expect("write");
        let logs = src.path().join("logs");
        std::fs::create_dir_all(&logs).expect("mkdir");
        std::fs::write(logs.join("audit.jsonl"), b"{}\n").expect("write");

        let (bytes, stats) =
            write_archive(&[a.clone(), logs.clone()], Vec::new()).expect("archive");
        assert_eq!(
            stats,
            FileStats {
                files: 4,
                bytes: 5 + 10_000 + 3
            }
        );
        assert_eq!(inspect_archive(&bytes[..]).expect("inspect"), stats);
        let (again, _) = write_archive(&[a.clone(), logs], Vec::new()).expect("archive");
        assert_eq!(bytes, again, "stable output for the same tree");

        let dest = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            unpack_archive(&bytes[..], dest.path()).expect("unpack"),
            stats
        );
        let restored = dest.path().join(archive_name(&a)).join("nested/two.bin");
        assert_eq!(std::fs::read(restored).expect("read"), vec![7u8; 10_000]);

        let missing = write_archive(&[src.path().join("nope")], Vec::new());
        assert!(missing.is_err());
        assert!(
            !matches!(inspect_archive(&bytes[..bytes.len() / 2]), Ok(s) if s == stats),
            "a truncated archive does not pass for the whole"
        );
    }

    #[test]
    fn archive_names_drop_roots_and_dots() {
        assert_eq!(
            archive_name(Path::new("/srv/data")),
            PathBuf::from("srv/data")
        );
        assert_eq!(
            archive_name(Path::new("./var/logs")),
            PathBuf::from("var/logs")
        );
        assert_eq!(archive_name(Path::new("../x")), PathBuf::from("x"));
    }
}
