//! The function's code: where the runtime binaries come from, the user's
//! files, and the zip Lambda runs.
//!
//! Lambda unpacks a zip into `/var/task` (read-only) and, for a custom
//! runtime, executes `/var/task/bootstrap`. So the zip holds:
//!
//! ```text
//! bootstrap            boxer-runtime, mode 0755
//! libboxer_shim.so     the LD_PRELOAD shim, mode 0644
//! <files>/...          the user's program and data, relative paths kept
//! ```
//!
//! The function runs as a user that owns none of these files, so modes are
//! normalised to what that user needs: 0755 for anything executable by its
//! owner here, 0644 for the rest. Entries carry a fixed date, so the same
//! inputs make the same bytes (and the same `CodeSha256` on Lambda).

use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::Architecture;
use super::elf::{self, ElfError};

/// Name of the runtime in the package: what Lambda executes.
pub const BOOTSTRAP: &str = "bootstrap";
/// Name of the shim in the package (beside `bootstrap`, where the runtime
/// looks for it).
pub const SHIM: &str = "libboxer_shim.so";
/// Name of the runtime binary cargo builds.
pub const RUNTIME_BINARY: &str = "boxer-runtime";

/// Environment variable naming the directory of Lambda builds of
/// `boxer-runtime` and the shim (what `--runtime-dir` sets).
pub const RUNTIME_DIR_ENV: &str = "BOXER_LAMBDA_BUILD";

/// Lambda's limit on a zip uploaded directly in CreateFunction /
/// UpdateFunctionCode (larger ones must go through S3 or a container image).
pub const MAX_ZIP_BYTES: u64 = 50 * 1024 * 1024;
/// Lambda's limit on the unpacked size of a function's zip.
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;

/// Why the package could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// No directory with the binaries was found.
    #[error(
        "no Lambda build of boxer-runtime and {SHIM} found (looked in {}); build them with:\n  {}\nor pass --runtime-dir DIR (or set {RUNTIME_DIR_ENV}) to where they are",
        looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        arch.build_command()
    )]
    NoRuntime {
        /// Directories looked in.
        looked: Vec<PathBuf>,
        /// The function's architecture.
        arch: Architecture,
    },
    /// A binary is missing from the given directory.
    #[error("{} not found (--runtime-dir / {RUNTIME_DIR_ENV} must hold {RUNTIME_BINARY} and {SHIM}); build them with:\n  {}", path.display(), arch.build_command())]
    MissingBinary {
        /// The file that is not there.
        path: PathBuf,
        /// The function's architecture.
        arch: Architecture,
    },
    /// A binary would not run on Lambda.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// A user file is in the way of the runtime's own.
    #[error(
        "{} would replace Boxer's own {name} in the package; rename it or move it into a subdirectory",
        path.display()
    )]
    Reserved {
        /// The user's file.
        path: PathBuf,
        /// The reserved name.
        name: &'static str,
    },
    /// A file that cannot go into a zip.
    #[error("{}: {why}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Reading a file failed.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Over Lambda's size limits.
    #[error("{what} is {} MB, over Lambda's limit of {} MB; ship large files with a container image (--image) instead", size / 1_000_000, limit / 1_000_000)]
    TooLarge {
        /// Which size.
        what: &'static str,
        /// The size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The zip writer failed.
    #[error("writing the zip: {0}")]
    Zip(#[from] zip::result::ZipError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io { path: path.to_owned(), source }
}

/// `boxer-runtime` and the shim, built for Lambda.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeBinaries {
    /// `boxer-runtime`, packed as `bootstrap`.
    pub runtime: PathBuf,
    /// `libboxer_shim.so`.
    pub shim: PathBuf,
}

impl RuntimeBinaries {
    /// The two binaries in `dir`, which must both exist.
    pub fn in_dir(dir: &Path, arch: Architecture) -> Result<Self, PackageError> {
        let binaries = RuntimeBinaries { runtime: dir.join(RUNTIME_BINARY), shim: dir.join(SHIM) };
        for path in [&binaries.runtime, &binaries.shim] {
            if !path.is_file() {
                return Err(PackageError::MissingBinary { path: path.clone(), arch });
            }
        }
        Ok(binaries)
    }

    /// The binaries in `dir` if given (`--runtime-dir`), else in the first
    /// of [`default_dirs`] that has both.
    pub fn find(dir: Option<&Path>, arch: Architecture) -> Result<Self, PackageError> {
        if let Some(dir) = dir {
            return Self::in_dir(dir, arch);
        }
        let exe = std::env::current_exe().map_err(io(Path::new("the boxer executable")))?;
        let looked = default_dirs(&exe, arch);
        looked.iter().find_map(|d| Self::in_dir(d, arch).ok()).ok_or(PackageError::NoRuntime { looked, arch })
    }

    /// Checks that both run on a Lambda function of `arch` (processor and
    /// glibc); see [`elf::check_for_lambda`].
    pub fn check(&self, arch: Architecture) -> Result<(), ElfError> {
        elf::check_for_lambda(&self.runtime, arch)?;
        elf::check_for_lambda(&self.shim, arch)?;
        Ok(())
    }
}

/// Where the binaries are when `boxer` runs from a cargo target directory:
/// `target/release/boxer` (or `debug`) has them in
/// `target/<arch>-unknown-linux-gnu/release/`, where `cargo zigbuild
/// --release --target <arch>-unknown-linux-gnu.2.34` puts them; then the
/// same triple's directory of boxer's own profile.
pub fn default_dirs(exe: &Path, arch: Architecture) -> Vec<PathBuf> {
    let Some(profile_dir) = exe.parent() else { return vec![] };
    let Some(target) = profile_dir.parent() else { return vec![] };
    let mut dirs = vec![target.join(arch.rust_target()).join("release")];
    if let Some(profile) = profile_dir.file_name()
        && profile != "release"
    {
        dirs.push(target.join(arch.rust_target()).join(profile));
    }
    dirs
}

/// One entry of the user's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFile {
    /// Path inside the package, `/`-separated, relative.
    pub path: String,
    /// What it is.
    pub kind: UserFileKind,
}

/// What a [`UserFile`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserFileKind {
    /// A directory (kept so that empty ones survive).
    Dir,
    /// A regular file.
    File {
        /// Where it is on this machine.
        source: PathBuf,
        /// Whether its owner may execute it here (it is then 0755 on Lambda).
        executable: bool,
    },
    /// A symbolic link, kept as one.
    Symlink {
        /// Its target, as written.
        target: String,
    },
}

impl UserFile {
    /// Mode on Lambda: 0755 for directories and executables, 0644 otherwise.
    pub fn mode(&self) -> u32 {
        match self.kind {
            UserFileKind::Dir | UserFileKind::File { executable: true, .. } => 0o755,
            UserFileKind::Symlink { .. } => 0o777,
            UserFileKind::File { executable: false, .. } => 0o644,
        }
    }
}

/// Lists `dir` recursively in path order, refusing names that would replace
/// `bootstrap` or the shim and files a zip cannot hold.
pub fn collect_files(dir: &Path) -> Result<Vec<UserFile>, PackageError> {
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(PackageError::Unsupported { path: dir.to_owned(), why: "not a directory".into() });
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<UserFile>) -> Result<(), PackageError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io(dir))?
        .into_iter()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Err(PackageError::Unsupported { path, why: "the name is not UTF-8".into() });
        };
        let rel = format!("{prefix}{name}");
        if prefix.is_empty()
            && let Some(reserved) = [BOOTSTRAP, SHIM].into_iter().find(|r| *r == name)
        {
            return Err(PackageError::Reserved { path, name: reserved });
        }
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let kind = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(&path))?;
            let Some(target) = target.to_str() else {
                return Err(PackageError::Unsupported { path, why: "the link's target is not UTF-8".into() });
            };
            UserFileKind::Symlink { target: target.to_owned() }
        } else if meta.is_dir() {
            out.push(UserFile { path: format!("{rel}/"), kind: UserFileKind::Dir });
            walk(&path, &format!("{rel}/"), out)?;
            continue;
        } else if meta.is_file() {
            UserFileKind::File { source: path, executable: meta.permissions().mode() & 0o100 != 0 }
        } else {
            return Err(PackageError::Unsupported {
                path,
                why: "not a regular file, directory or symbolic link (sockets and devices cannot be packed)".into(),
            });
        };
        out.push(UserFile { path: rel, kind });
    }
    Ok(())
}

/// Packs the function's zip: `bootstrap`, the shim, and the user's files
/// (already listed by [`collect_files`]).
pub fn build_zip(binaries: &RuntimeBinaries, files: &[UserFile]) -> Result<Vec<u8>, PackageError> {
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default());
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let mut unzipped = 0u64;
    let mut add = |zip: &mut ZipWriter<Cursor<Vec<u8>>>, name: &str, source: &Path, mode: u32| {
        let data = std::fs::read(source).map_err(io(source))?;
        unzipped += data.len() as u64;
        zip.start_file(name, options.unix_permissions(mode))?;
        zip.write_all(&data).map_err(io(source))?;
        Ok::<_, PackageError>(())
    };
    add(&mut zip, BOOTSTRAP, &binaries.runtime, 0o755)?;
    add(&mut zip, SHIM, &binaries.shim, 0o644)?;
    for f in files {
        match &f.kind {
            UserFileKind::Dir => zip.add_directory(f.path.as_str(), options.unix_permissions(f.mode()))?,
            UserFileKind::File { source, .. } => add(&mut zip, &f.path, source, f.mode())?,
            UserFileKind::Symlink { target } => zip.add_symlink(f.path.as_str(), target, options)?,
        }
    }
    if unzipped > MAX_UNZIPPED_BYTES {
        return Err(PackageError::TooLarge { what: "the unpacked package", size: unzipped, limit: MAX_UNZIPPED_BYTES });
    }
    let bytes = zip.finish()?.into_inner();
    if bytes.len() as u64 > MAX_ZIP_BYTES {
        return Err(PackageError::TooLarge { what: "the zip", size: bytes.len() as u64, limit: MAX_ZIP_BYTES });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("boxer-package-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn zip_layout_and_modes() {
        let tmp = Tmp::new("layout");
        let bin = tmp.0.join("bin");
        write(&bin.join(RUNTIME_BINARY), "runtime", 0o700);
        write(&bin.join(SHIM), "shim", 0o755);
        let files = tmp.0.join("files");
        write(&files.join("server.py"), "print('hi')", 0o700);
        write(&files.join("data/config.txt"), "x=1", 0o600);
        std::fs::create_dir_all(files.join("empty")).unwrap();
        std::os::unix::fs::symlink("server.py", files.join("run")).unwrap();

        let binaries = RuntimeBinaries::in_dir(&bin, Architecture::X86_64).unwrap();
        let listed = collect_files(&files).unwrap();
        let bytes = build_zip(&binaries, &listed).unwrap();
        assert_eq!(bytes, build_zip(&binaries, &listed).unwrap(), "the same inputs make the same zip");

        let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let mut seen = Vec::new();
        for i in 0..zip.len() {
            let mut f = zip.by_index(i).unwrap();
            let name = f.name().unwrap().into_owned();
            let mode = f.unix_mode().unwrap() & 0o777;
            let mut text = String::new();
            if f.is_file() || f.is_symlink() {
                f.read_to_string(&mut text).unwrap();
            }
            seen.push((name, mode, f.is_symlink(), text));
        }
        let expect = |n: &str, m: u32, link: bool, t: &str| (n.to_owned(), m, link, t.to_owned());
        assert_eq!(
            seen,
            [
                expect("bootstrap", 0o755, false, "runtime"),
                expect("libboxer_shim.so", 0o644, false, "shim"),
                expect("data/", 0o755, false, ""),
                expect("data/config.txt", 0o644, false, "x=1"),
                expect("empty/", 0o755, false, ""),
                expect("run", 0o777, true, "server.py"),
                expect("server.py", 0o755, false, "print('hi')"),
            ]
        );
    }

    #[test]
    fn refuses_reserved_names_and_missing_binaries() {
        let tmp = Tmp::new("reserved");
        write(&tmp.0.join("files/bootstrap"), "mine", 0o755);
        let e = collect_files(&tmp.0.join("files")).unwrap_err().to_string();
        assert!(e.contains("would replace Boxer's own bootstrap"), "{e}");
        // Deeper down the name is free.
        std::fs::remove_file(tmp.0.join("files/bootstrap")).unwrap();
        write(&tmp.0.join("files/sub/libboxer_shim.so"), "x", 0o644);
        assert_eq!(collect_files(&tmp.0.join("files")).unwrap().len(), 2);
        write(&tmp.0.join("files/libboxer_shim.so"), "x", 0o644);
        assert!(collect_files(&tmp.0.join("files")).unwrap_err().to_string().contains(SHIM));

        let e = RuntimeBinaries::in_dir(&tmp.0, Architecture::Arm64).unwrap_err().to_string();
        assert!(e.contains("boxer-runtime not found") && e.contains("aarch64-unknown-linux-gnu.2.34"), "{e}");
        let e = collect_files(&tmp.0.join("nope")).unwrap_err().to_string();
        assert!(e.starts_with("reading "), "{e}");
    }

    #[test]
    fn default_dirs_are_beside_the_target_dir() {
        let dirs = default_dirs(Path::new("/w/target/release/boxer"), Architecture::X86_64);
        assert_eq!(dirs, [PathBuf::from("/w/target/x86_64-unknown-linux-gnu/release")]);
        let dirs = default_dirs(Path::new("/w/target/debug/boxer"), Architecture::Arm64);
        assert_eq!(
            dirs,
            [
                PathBuf::from("/w/target/aarch64-unknown-linux-gnu/release"),
                PathBuf::from("/w/target/aarch64-unknown-linux-gnu/debug")
            ]
        );
    }
}
