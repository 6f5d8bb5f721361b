//! Will these binaries run on Lambda? Read their ELF headers and find out
//! before uploading.
//!
//! A binary linked on a newer Linux than Lambda's asks the dynamic loader for
//! symbol versions (`GLIBC_2.39`, ...) that Amazon Linux 2023's glibc 2.34
//! does not have; the function then dies at start with a loader message in
//! CloudWatch and nothing in `boxer`'s output. The versions a binary needs
//! are written in its `.gnu.version_r` section, so the check is exact and
//! needs no Lambda: the highest `GLIBC_x.y` there must be at most 2.34, and
//! `e_machine` must match the function's architecture.

use std::fmt;
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{ElfFile64, FileHeader};

use super::Architecture;

/// The glibc of Lambda's `provided.al2023` runtime (Amazon Linux 2023 ships
/// glibc 2.34; AWS documents it in the runtime's OS details).
pub const LAMBDA_GLIBC: GlibcVersion = GlibcVersion { major: 2, minor: 34, patch: 0 };

/// A glibc symbol version such as `GLIBC_2.2.5` or `GLIBC_2.34`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GlibcVersion {
    /// Major version (2 for every glibc since 1997).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Third component, 0 when absent (`GLIBC_2.2.5` has 5).
    pub patch: u32,
}

impl GlibcVersion {
    /// Parses a version name from `.gnu.version_r` (`GLIBC_2.34`); `None` for
    /// other names (`GLIBC_PRIVATE`, `GCC_3.0`).
    pub fn from_symbol_version(name: &str) -> Option<Self> {
        let mut parts = name.strip_prefix("GLIBC_")?.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        parts.next().is_none().then_some(GlibcVersion { major, minor, patch })
    }
}

impl fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

/// Why a binary was not accepted for Lambda.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a 64-bit little-endian ELF file, or a damaged one.
    #[error("{} is not a 64-bit Linux executable or library ({why})", path.display())]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        why: String,
    },
    /// Built for another processor.
    #[error(
        "{} is built for {found}, but the function is {arch}; build it for {arch} with:\n  {}",
        path.display(),
        arch.build_command()
    )]
    WrongArchitecture {
        /// The file.
        path: PathBuf,
        /// What it is built for.
        found: String,
        /// What the function runs on.
        arch: Architecture,
    },
    /// Needs a newer glibc than Lambda has.
    #[error(
        "{} needs glibc {needed}, but Lambda's {runtime} has glibc {LAMBDA_GLIBC}: it was linked against this \
         machine's newer glibc and would fail to start on Lambda. Build it against glibc {LAMBDA_GLIBC} with:\n  {}",
        path.display(),
        arch.build_command(),
        runtime = super::LAMBDA_RUNTIME
    )]
    GlibcTooNew {
        /// The file.
        path: PathBuf,
        /// The highest version it needs.
        needed: GlibcVersion,
        /// The function's architecture (for the build command).
        arch: Architecture,
    },
}

/// What the ELF header and version needs say about a binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// Its architecture, if it is one Lambda offers.
    pub arch: Option<Architecture>,
    /// `e_machine`, for messages about other architectures.
    pub machine: u16,
    /// The highest glibc symbol version it needs; `None` for a static binary
    /// or one that needs no versioned glibc symbol.
    pub glibc: Option<GlibcVersion>,
}

/// Reads `path` and returns the highest glibc version it needs (`None` if it
/// needs none, e.g. a static binary).
pub fn required_glibc(path: &Path) -> Result<Option<GlibcVersion>, ElfError> {
    Ok(inspect(path)?.glibc)
}

/// Reads `path`'s architecture and glibc needs.
pub fn inspect(path: &Path) -> Result<ElfInfo, ElfError> {
    let data = std::fs::read(path).map_err(|source| ElfError::Read { path: path.to_owned(), source })?;
    inspect_bytes(&data).map_err(|why| ElfError::NotElf { path: path.to_owned(), why })
}

/// Like [`inspect`], for a file already in memory (e.g. read from a zip).
pub fn inspect_bytes(data: &[u8]) -> Result<ElfInfo, String> {
    let file = ElfFile64::<object::Endianness>::parse(data).map_err(|e| e.to_string())?;
    let endian = file.endian();
    let machine = file.elf_header().e_machine(endian);
    let arch = match machine {
        elf::EM_X86_64 => Some(Architecture::X86_64),
        elf::EM_AARCH64 => Some(Architecture::Arm64),
        _ => None,
    };
    let sections = file.elf_section_table();
    let mut glibc = None;
    if let Some((mut needs, strings_index)) = sections.gnu_verneed(endian, data).map_err(|e| e.to_string())? {
        let strings = sections.strings(endian, data, strings_index).map_err(|e| e.to_string())?;
        while let Some((_need, mut auxes)) = needs.next().map_err(|e| e.to_string())? {
            while let Some(aux) = auxes.next().map_err(|e| e.to_string())? {
                let name = aux.name(endian, strings).map_err(|e| e.to_string())?;
                let version = std::str::from_utf8(name).ok().and_then(GlibcVersion::from_symbol_version);
                glibc = glibc.max(version);
            }
        }
    }
    Ok(ElfInfo { arch, machine: machine.0, glibc })
}

/// Checks that `path` runs on a Lambda function of `arch`: the right
/// processor and at most [`LAMBDA_GLIBC`].
pub fn check_for_lambda(path: &Path, arch: Architecture) -> Result<ElfInfo, ElfError> {
    let info = inspect(path)?;
    if info.arch != Some(arch) {
        let found = match info.arch {
            Some(a) => a.to_string(),
            None => format!("ELF machine {}", info.machine),
        };
        return Err(ElfError::WrongArchitecture { path: path.to_owned(), found, arch });
    }
    if let Some(needed) = info.glibc.filter(|v| *v > LAMBDA_GLIBC) {
        return Err(ElfError::GlibcTooNew { path: path.to_owned(), needed, arch });
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_symbol_versions() {
        let v = |s| GlibcVersion::from_symbol_version(s);
        assert_eq!(v("GLIBC_2.34"), Some(GlibcVersion { major: 2, minor: 34, patch: 0 }));
        assert_eq!(v("GLIBC_2.2.5"), Some(GlibcVersion { major: 2, minor: 2, patch: 5 }));
        assert_eq!(v("GLIBC_PRIVATE"), None);
        assert_eq!(v("GCC_3.0"), None);
        assert_eq!(v("GLIBC_2.3.4.5"), None);
        assert!(v("GLIBC_2.39").unwrap() > LAMBDA_GLIBC && v("GLIBC_2.17").unwrap() < LAMBDA_GLIBC);
        assert!(v("GLIBC_2.2.5").unwrap() < v("GLIBC_2.3").unwrap());
        assert_eq!(v("GLIBC_2.2.5").unwrap().to_string(), "2.2.5");
        assert_eq!(LAMBDA_GLIBC.to_string(), "2.34");
    }

    /// This test binary was linked on the build host: its needs are the
    /// host's. On this project's Debian 13 hosts (glibc 2.41) a Rust binary
    /// needs more than 2.34, which is exactly what the check must refuse.
    #[test]
    fn host_binary_is_refused_with_the_build_command() {
        let exe = std::env::current_exe().unwrap();
        let info = inspect(&exe).unwrap();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(info.arch, Some(Architecture::X86_64));
        let needed = info.glibc.expect("a dynamically linked test binary needs glibc symbols");
        let host_glibc = host_glibc();
        assert!(needed <= host_glibc, "{needed} > host {host_glibc}");
        if needed <= LAMBDA_GLIBC {
            // A host old enough to build for Lambda directly: nothing to refuse.
            return;
        }
        let arch = info.arch.unwrap();
        let e = check_for_lambda(&exe, arch).unwrap_err().to_string();
        assert!(e.contains(&format!("needs glibc {needed}")), "{e}");
        assert!(
            e.contains(&format!(
                "cargo zigbuild --release --target {}.2.34 -p boxer-runtime -p boxer-shim",
                arch.rust_target()
            )),
            "{e}"
        );
    }

    /// A binary that needs a glibc newer than Lambda's, whatever the build
    /// host: this test binary with every `GLIBC_2.x` version name rewritten
    /// to `GLIBC_9.x` (same length, so the ELF stays valid).
    #[test]
    fn too_new_glibc_is_refused_with_the_zigbuild_command() {
        let exe = std::env::current_exe().unwrap();
        let mut data = std::fs::read(&exe).unwrap();
        let mut patched = 0;
        for i in 0..data.len().saturating_sub(8) {
            if &data[i..i + 8] == b"GLIBC_2." {
                data[i + 6] = b'9';
                patched += 1;
            }
        }
        assert!(patched > 0);
        let dir = std::env::temp_dir().join(format!("boxer-elf-new-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("boxer-runtime");
        std::fs::write(&path, &data).unwrap();
        let info = inspect(&path).unwrap();
        assert_eq!(info.glibc.map(|v| v.major), Some(9));
        let arch = info.arch.unwrap();
        let e = check_for_lambda(&path, arch).unwrap_err();
        assert!(matches!(e, ElfError::GlibcTooNew { needed, .. } if needed.major == 9), "{e}");
        let e = e.to_string();
        assert!(e.contains("needs glibc 9.") && e.contains("Lambda's provided.al2023 has glibc 2.34"), "{e}");
        assert!(
            e.ends_with(&format!(
                "pip install cargo-zigbuild && cargo zigbuild --release --target {}.2.34 -p boxer-runtime -p boxer-shim",
                arch.rust_target()
            )),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_architecture_and_garbage() {
        let exe = std::env::current_exe().unwrap();
        let other = if cfg!(target_arch = "x86_64") { Architecture::Arm64 } else { Architecture::X86_64 };
        let e = check_for_lambda(&exe, other).unwrap_err().to_string();
        assert!(e.contains(&format!("the function is {other}")) && e.contains(other.rust_target()), "{e}");

        let dir = std::env::temp_dir().join(format!("boxer-elf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("script.sh");
        std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
        let e = check_for_lambda(&text, Architecture::X86_64).unwrap_err().to_string();
        assert!(e.contains("is not a 64-bit Linux executable"), "{e}");
        let e = check_for_lambda(&dir.join("missing"), Architecture::X86_64).unwrap_err().to_string();
        assert!(e.starts_with("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The build host's glibc, from `gnu_get_libc_version`.
    fn host_glibc() -> GlibcVersion {
        // SAFETY: returns a pointer to a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) }.to_str().unwrap();
        GlibcVersion::from_symbol_version(&format!("GLIBC_{v}")).unwrap()
    }

    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const std::ffi::c_char;
    }
}
