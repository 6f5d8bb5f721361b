//! Starting the node's application with the shim preloaded.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use object::read::ReadCache;
use object::read::elf::{ElfFile32, ElfFile64, FileHeader};
use object::{FileKind, Object, ReadRef};

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
        "{} is statically linked: it does not use the C library's socket calls, so the Boxer shim cannot put it on the overlay; use a dynamically linked build, or {}", path.display(), explicit_hint(service)
    )]
    Static {
        /// The executable.
        path: PathBuf,
        /// The node's service, named in the advice.
        service: String,
    },
    /// A Go binary: Go makes its own system calls.
    #[error(
        "{} is a Go program: Go makes its own system calls instead of using the C library, so the Boxer shim cannot put it on the overlay; {}", path.display(), explicit_hint(service)
    )]
    Go {
        /// The executable.
        path: PathBuf,
        /// The node's service, named in the advice.
        service: String,
    },
    /// The shim library is missing.
    #[error("the Boxer shim {0} does not exist (build it with `cargo build -p boxer-shim`, or pass --shim)")]
    NoShim(PathBuf),
}

/// How a program the shim cannot serve still joins the overlay: explicit
/// ports, in the words of boxer.toml (and of the runtime's flags).
fn explicit_hint(service: &str) -> String {
    format!(
        "add expose = [PORT] (ports it listens on, on 127.0.0.1) and forward = [\"LOCAL=NAME:PORT\"] (peers it connects to) to services.{service} in boxer.toml (boxer-runtime: --expose PORT, --forward LOCAL=NAME:PORT)"
    )
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

/// What an executable is, as far as the shim is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executable {
    /// A dynamically linked ELF file, a script, or anything else that is
    /// not ELF (their interpreter is dynamically linked in practice): the
    /// shim works.
    Dynamic,
    /// A statically linked ELF file (no `PT_INTERP`): `LD_PRELOAD` has no effect.
    Static,
    /// A Go binary: it makes its own system calls.
    Go,
}

/// Reads the headers and symbol tables of `path` and tells what kind of
/// executable it is.
///
/// Only what the parser reads is read, through a [`ReadCache`]: the ELF
/// header, the program headers, the section headers and their names, and
/// the symbol tables (`.symtab` and `.dynsym` with their string tables,
/// which `object`'s `ElfFile::parse` loads whole though the answer needs
/// none of them). Never the whole file: a program can be hundreds of MB
/// (a debug build, a JVM's launcher beside its modules), and reading it
/// all made the runtime's resident memory peak at the program's size on
/// every start, which a small Lambda function cannot afford. An unstripped
/// program's symbol table is still read: a few MB for a large one.
pub fn executable_kind(path: &Path) -> Result<Executable, AppError> {
    let file = std::fs::File::open(path).map_err(|source| AppError::Read { path: path.to_owned(), source })?;
    let cache = ReadCache::new(file);
    let data = &cache;
    let (interp, go) = match FileKind::parse(data) {
        Ok(FileKind::Elf64) => match ElfFile64::<object::Endianness, _>::parse(data) {
            Ok(elf) => (has_interp(&elf), is_go(&elf)),
            Err(_) => return Ok(Executable::Dynamic),
        },
        Ok(FileKind::Elf32) => match ElfFile32::<object::Endianness, _>::parse(data) {
            Ok(elf) => (has_interp(&elf), is_go(&elf)),
            Err(_) => return Ok(Executable::Dynamic),
        },
        _ => return Ok(Executable::Dynamic),
    };
    Ok(if go {
        Executable::Go
    } else if interp {
        Executable::Dynamic
    } else {
        Executable::Static
    })
}

/// Refuses executables the shim cannot work with: statically linked ELF
/// files and Go binaries (the advice names `service`, whose boxer.toml
/// entry can list the ports explicitly instead).
pub fn check_executable(path: &Path, service: &str) -> Result<(), AppError> {
    let (path, service) = (path.to_owned(), service.to_owned());
    match executable_kind(&path)? {
        Executable::Dynamic => Ok(()),
        Executable::Static => Err(AppError::Static { path, service }),
        Executable::Go => Err(AppError::Go { path, service }),
    }
}

/// Decides how the program at `path` (of a node of `service`) joins the
/// overlay; `Some(shim)` to preload `shim`, `None` to run it without one.
///
/// Without `explicit` ports the program needs the shim: static and Go
/// programs are refused ([`check_executable`]) and a missing shim is an
/// error. With them (the node has `--expose`/`--forward`: "explicit mode"),
/// the runtime carries the listed ports itself, so a static or Go program
/// runs without the shim, and so does any program when the shim is
/// missing; a dynamic program still gets the shim when it is there (names
/// and other ports keep working).
pub fn shim_for(path: &Path, service: &str, shim: PathBuf, explicit: bool) -> Result<Option<PathBuf>, AppError> {
    match check_executable(path, service) {
        Ok(()) if shim.is_file() => Ok(Some(shim)),
        Ok(()) if explicit => {
            tracing::info!(
                "the shim {} does not exist: running the program with its explicit ports only",
                shim.display()
            );
            Ok(None)
        }
        Ok(()) => Err(AppError::NoShim(shim)),
        Err(AppError::Static { path, .. } | AppError::Go { path, .. }) if explicit => {
            tracing::info!(
                "{} bypasses the C library: running it without the shim, on its expose/forward ports only",
                path.display()
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn has_interp<'d, E: FileHeader, R: ReadRef<'d>>(elf: &object::read::elf::ElfFile<'d, E, R>) -> bool {
    let endian = elf.endian();
    elf.elf_program_headers().iter().any(|ph| {
        use object::read::elf::ProgramHeader;
        ph.p_type(endian) == object::elf::PT_INTERP
    })
}

fn is_go<'d, E: FileHeader, R: ReadRef<'d>>(elf: &object::read::elf::ElfFile<'d, E, R>) -> bool {
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
        check_executable(&sh, "db").unwrap();
        assert!(matches!(resolve_command("no-such-command-boxer"), Err(AppError::NotFound(_))));
        // A script is not ELF: allowed.
        let dir = std::env::temp_dir().join(format!("boxer-app-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("s.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        check_executable(&script, "db").unwrap();
        // Explicit mode without the shim file: still runs.
        let no_shim = dir.join("missing.so");
        assert_eq!(shim_for(&script, "db", no_shim.clone(), true).unwrap(), None);
        assert!(matches!(shim_for(&script, "db", no_shim, false), Err(AppError::NoShim(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[cfg(test)]
mod static_tests {
    use super::*;

    /// A statically linked executable on this machine, if there is one.
    fn a_static_program() -> Option<PathBuf> {
        ["/bin/busybox", "/usr/bin/busybox", "/sbin/ldconfig", "/usr/sbin/ldconfig"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file() && executable_kind(p).ok() == Some(Executable::Static))
    }

    #[test]
    fn static_programs_are_refused_with_advice_for_their_service_unless_explicit() {
        let Some(path) = a_static_program() else {
            eprintln!("no statically linked program found here; skipped");
            return;
        };
        let e = check_executable(&path, "etcd").unwrap_err().to_string();
        assert!(e.contains("is statically linked"), "{e}");
        assert!(
            e.contains("add expose = [PORT] (ports it listens on, on 127.0.0.1) and forward = [\"LOCAL=NAME:PORT\"] (peers it connects to) to services.etcd in boxer.toml"),
            "{e}"
        );
        let shim = PathBuf::from("/nonexistent/libboxer_shim.so");
        assert!(matches!(shim_for(&path, "etcd", shim.clone(), false), Err(AppError::Static { .. })));
        assert_eq!(shim_for(&path, "etcd", shim, true).unwrap(), None, "explicit mode runs it without the shim");
    }
}
