//! Starting the node's application with the shim preloaded.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use object::read::elf::{ElfFile32, ElfFile64, FileHeader};
use object::{FileKind, Object};

/// File name of the shim library.
pub const SHIM_FILE: &str = "libboxer_shim.so";

/// Why the application cannot join the overlay.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The command is not on `PATH` or not executable.
    #[error("command {0:?} not found (looked in PATH)")]
    NotFound(String),
    /// The executable could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The executable.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Statically linked: LD_PRELOAD has no effect.
    #[error(
        "{0} is statically linked: it does not use the C library's socket calls, so the Boxer shim cannot put it on the overlay (use a dynamically linked build, or --forward/--expose)"
    )]
    Static(PathBuf),
    /// A Go binary: Go makes its own system calls.
    #[error(
        "{0} is a Go program: Go makes its own system calls instead of using the C library, so the Boxer shim cannot put it on the overlay (use --forward/--expose)"
    )]
    Go(PathBuf),
    /// The shim library is missing.
    #[error("the Boxer shim {0} does not exist (build it with `cargo build -p boxer-shim`, or pass --shim)")]
    NoShim(PathBuf),
}

/// `PATH` when the environment has none (what `execvp` assumes).
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Finds `command` like `execvp` does, in this process's `PATH`.
pub fn resolve_command(command: &str) -> Result<PathBuf, AppError> {
    resolve_command_in(command, &std::env::var_os("PATH").unwrap_or_else(|| OsString::from(DEFAULT_PATH)))
}

/// Finds `command` like `execvp` does, in the directories of `path`.
pub fn resolve_command_in(command: &str, path: &std::ffi::OsStr) -> Result<PathBuf, AppError> {
    if command.contains('/') {
        let p = PathBuf::from(command);
        return if p.is_file() { Ok(p) } else { Err(AppError::NotFound(command.to_owned())) };
    }
    std::env::split_paths(path)
        .map(|dir| dir.join(command))
        .find(|p| p.is_file())
        .ok_or_else(|| AppError::NotFound(command.to_owned()))
}

/// Refuses executables the shim cannot work with: statically linked ELF
/// files (no `PT_INTERP`) and Go binaries. Scripts and other files pass
/// (their interpreter is dynamically linked in practice).
pub fn check_executable(path: &Path) -> Result<(), AppError> {
    let data = std::fs::read(path).map_err(|source| AppError::Read { path: path.to_owned(), source })?;
    let kind = FileKind::parse(&*data);
    let (interp, go) = match kind {
        Ok(FileKind::Elf64) => match ElfFile64::<object::Endianness>::parse(&*data) {
            Ok(elf) => (has_interp(&elf), is_go(&elf)),
            Err(_) => return Ok(()),
        },
        Ok(FileKind::Elf32) => match ElfFile32::<object::Endianness>::parse(&*data) {
            Ok(elf) => (has_interp(&elf), is_go(&elf)),
            Err(_) => return Ok(()),
        },
        _ => return Ok(()),
    };
    if go {
        return Err(AppError::Go(path.to_owned()));
    }
    if !interp {
        return Err(AppError::Static(path.to_owned()));
    }
    Ok(())
}

fn has_interp<'d, E: FileHeader>(elf: &object::read::elf::ElfFile<'d, E>) -> bool {
    let endian = elf.endian();
    elf.elf_program_headers().iter().any(|ph| {
        use object::read::elf::ProgramHeader;
        ph.p_type(endian) == object::elf::PT_INTERP
    })
}

fn is_go<'d, E: FileHeader>(elf: &object::read::elf::ElfFile<'d, E>) -> bool {
    elf.section_by_name(".go.buildinfo").is_some() || elf.section_by_name(".note.go.buildid").is_some()
}

/// Default shim location: beside the runtime executable.
pub fn default_shim() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(SHIM_FILE)))
        .unwrap_or_else(|| PathBuf::from(SHIM_FILE))
}

/// `LD_PRELOAD` with the shim appended to any existing value.
pub fn ld_preload(shim: &Path, existing: Option<OsString>) -> OsString {
    match existing {
        Some(e) if !e.is_empty() => {
            let mut v = e;
            v.push(":");
            v.push(shim.as_os_str());
            v
        }
        _ => shim.as_os_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_is_appended() {
        let shim = Path::new("/x/libboxer_shim.so");
        assert_eq!(ld_preload(shim, None), "/x/libboxer_shim.so");
        assert_eq!(ld_preload(shim, Some("/a.so".into())), "/a.so:/x/libboxer_shim.so");
    }

    #[test]
    fn dynamic_executables_pass_and_missing_ones_are_reported() {
        let sh = resolve_command("sh").unwrap();
        check_executable(&sh).unwrap();
        assert!(matches!(resolve_command("no-such-command-boxer"), Err(AppError::NotFound(_))));
        // A script is not ELF: allowed.
        let dir = std::env::temp_dir().join(format!("boxer-app-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("s.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        check_executable(&script).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
