//! AWS Lambda: the cloud provider Boxer was made for.
//!
//! A cluster on Lambda is one function whose custom runtime (`bootstrap`) is
//! `boxer-runtime`; every node is one invocation of it. This module holds what
//! every Lambda step shares (the function's name, its architecture, the
//! limits Lambda enforces) and the steps themselves: [`aws`] loads
//! credentials and region, [`elf`] checks that the binaries run on Lambda's
//! Amazon Linux 2023, [`package`] packs the zip, [`image`] writes a container
//! build context and pushes it, and [`deploy`] creates or updates the
//! function (`boxer deploy`).

use std::fmt;
use std::ops::RangeInclusive;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::spec::Spec;

pub mod aws;
pub mod deploy;
pub mod elf;
pub mod function;
pub mod image;
pub mod invoke;
pub mod package;
pub mod trigger;

/// Lambda's limit on a function name (the name alone, not an ARN).
pub const MAX_FUNCTION_NAME_LEN: usize = 64;

/// Prefix of function names derived from a cluster name, so that Boxer's
/// functions sort together and say what made them in the Lambda console.
pub const FUNCTION_PREFIX: &str = "boxer-";

/// The Lambda runtime Boxer deploys on: the OS-only runtime of Amazon Linux
/// 2023, where the function's `bootstrap` is the runtime (no language runtime
/// that would never be used). Its glibc is 2.34 ([`elf::LAMBDA_GLIBC`]).
pub const LAMBDA_RUNTIME: &str = "provided.al2023";

/// The handler setting of a custom-runtime function. Lambda passes it to the
/// runtime as `_HANDLER`; `boxer-runtime` ignores it, and the console shows
/// it, so it names the executable that does the work.
pub const HANDLER: &str = "bootstrap";

/// Memory a function may have, in MB (Lambda's limits).
pub const MEMORY_MB: RangeInclusive<u32> = 128..=10240;
/// Invocation timeout a function may have, in seconds (Lambda's limits).
pub const TIMEOUT_SECS: RangeInclusive<u32> = 1..=900;
/// Size of `/tmp` a function may have, in MB (Lambda's limits).
pub const EPHEMERAL_STORAGE_MB: RangeInclusive<u32> = 512..=10240;

/// Default memory: Lambda gives CPU in proportion to memory, and 1769 MB is
/// where a function gets one full vCPU (AWS documents the ratio). A node's
/// runtime proxies every overlay byte through QUIC, which is CPU-bound (see
/// the design's throughput notes), so less memory means a slower network.
pub const DEFAULT_MEMORY_MB: u32 = 1769;
/// Default timeout: the longest Lambda allows. A node lives exactly as long
/// as its invocation, and the runtime stops the program cleanly before the
/// deadline, so a shorter timeout only cuts clusters short.
pub const DEFAULT_TIMEOUT_SECS: u32 = 900;
/// Default `/tmp`: the size included in Lambda's price (more is billed).
pub const DEFAULT_EPHEMERAL_STORAGE_MB: u32 = 512;

/// Checks an execution role: Lambda wants the role's ARN,
/// `arn:<partition>:iam::<account>:role/<name>`.
pub fn validate_role_arn(role: &str) -> Result<(), String> {
    let parts: Vec<&str> = role.splitn(6, ':').collect();
    let ok = matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if !partition.is_empty()
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && resource.strip_prefix("role/").is_some_and(|n| !n.is_empty()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{role:?} is not an IAM role ARN like \"arn:aws:iam::123456789012:role/boxer-lambda\" \
             (find it with `aws iam get-role --role-name NAME --query Role.Arn`)"
        ))
    }
}

/// The processor architecture of a function (Lambda offers these two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, clap::ValueEnum)]
pub enum Architecture {
    /// Intel/AMD 64-bit.
    #[default]
    #[serde(rename = "x86_64")]
    #[value(name = "x86_64")]
    X86_64,
    /// Graviton (ARM 64-bit): about 20% cheaper per GB-second.
    #[serde(rename = "arm64")]
    #[value(name = "arm64")]
    Arm64,
}

impl Architecture {
    /// Lambda's name for it (`x86_64`, `arm64`).
    pub fn lambda_name(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// The Rust target triple to build the runtime for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64-unknown-linux-gnu",
            Architecture::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The exact command that builds `boxer-runtime` and the shim so that
    /// they run on Lambda: for this architecture, linked against glibc 2.34
    /// (cargo-zigbuild links against an older glibc than the build host's).
    pub fn build_command(self) -> String {
        format!(
            "pip install cargo-zigbuild && cargo zigbuild --release --target {}.{} -p boxer-runtime -p boxer-shim",
            self.rust_target(),
            elf::LAMBDA_GLIBC
        )
    }

    /// The Docker platform of the architecture (`linux/amd64`, `linux/arm64`).
    pub fn docker_platform(self) -> &'static str {
        match self {
            Architecture::X86_64 => "linux/amd64",
            Architecture::Arm64 => "linux/arm64",
        }
    }

    /// The SDK's enum value.
    pub fn to_sdk(self) -> aws_sdk_lambda::types::Architecture {
        match self {
            Architecture::X86_64 => aws_sdk_lambda::types::Architecture::X8664,
            Architecture::Arm64 => aws_sdk_lambda::types::Architecture::Arm64,
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.lambda_name())
    }
}

/// Checks a function name against Lambda's rules: 1 to 64 of ASCII letters,
/// digits, `-` and `_`.
pub fn validate_function_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_FUNCTION_NAME_LEN {
        return Err(format!(
            "a Lambda function name has 1 to {MAX_FUNCTION_NAME_LEN} characters, {name:?} has {}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(format!("{name:?}: a Lambda function name has only letters, digits, '-' and '_', not {c:?}"));
    }
    Ok(())
}

/// The Lambda function of a cluster: `[lambda] function`, else
/// `boxer-<cluster>`. A cluster name too long for that (names may have 63
/// characters, function names 64) is cut and given a hash of the whole name,
/// so two long names that share a beginning still get two functions.
pub fn function_name(spec: &Spec) -> String {
    if let Some(name) = &spec.lambda.function {
        return name.clone();
    }
    derived_function_name(&spec.name)
}

fn derived_function_name(cluster: &str) -> String {
    let full = format!("{FUNCTION_PREFIX}{cluster}");
    if full.len() <= MAX_FUNCTION_NAME_LEN {
        return full;
    }
    let hash = Sha256::digest(cluster.as_bytes());
    let suffix: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    // Cluster names are ASCII (validated), so byte slicing is char slicing.
    let keep = MAX_FUNCTION_NAME_LEN - FUNCTION_PREFIX.len() - 1 - suffix.len();
    format!("{FUNCTION_PREFIX}{}-{suffix}", cluster[..keep].trim_end_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names() {
        assert_eq!(derived_function_name("redis"), "boxer-redis");
        let long = "a".repeat(63);
        let name = derived_function_name(&long);
        assert_eq!(name.len(), MAX_FUNCTION_NAME_LEN);
        assert!(validate_function_name(&name).is_ok());
        let other = derived_function_name(&format!("{}b", "a".repeat(62)));
        assert_ne!(name, other);
        assert!(validate_function_name("").is_err());
        assert!(validate_function_name(&"x".repeat(65)).is_err());
        assert!(validate_function_name("a.b").unwrap_err().contains("'.'"));
        assert!(validate_function_name("My_Func-1").is_ok());
    }

    #[test]
    fn role_arns() {
        assert!(validate_role_arn("arn:aws:iam::123456789012:role/boxer").is_ok());
        assert!(validate_role_arn("arn:aws-cn:iam::123456789012:role/path/boxer").is_ok());
        for bad in [
            "boxer",
            "arn:aws:iam::123:role/boxer",
            "arn:aws:iam::123456789012:user/me",
            "arn:aws:iam::123456789012:role/",
        ] {
            assert!(validate_role_arn(bad).unwrap_err().contains("is not an IAM role ARN"), "{bad}");
        }
    }

    #[test]
    fn build_command_names_the_target() {
        assert_eq!(
            Architecture::Arm64.build_command(),
            "pip install cargo-zigbuild && cargo zigbuild --release --target aarch64-unknown-linux-gnu.2.34 -p boxer-runtime -p boxer-shim"
        );
    }
}
