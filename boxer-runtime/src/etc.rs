//! The `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` the shim shows
//! the app, rewritten when membership changes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use boxer_proto::{Membership, names};
use tracing::warn;

use crate::node::Shared;

/// `hosts` content: localhost, then every member with all its names.
pub fn hosts(membership: &Membership) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for m in membership.members() {
        let all = names::all_names(&m.service, m.index, m.node_id.0, membership.cluster());
        let _ = writeln!(out, "{}\t{}", m.overlay_ip, all.join(" "));
    }
    out
}

pub(crate) async fn keep_written(shared: Arc<Shared>, dir: PathBuf) {
    let hostname = format!("{}\n", shared.joined.names[0]);
    let resolv = tokio::fs::read_to_string("/etc/resolv.conf").await.unwrap_or_default();
    for (name, text) in [("hostname", hostname.as_str()), ("resolv.conf", resolv.as_str())] {
        if let Err(e) = write_atomically(&dir.join(name), text).await {
            warn!("cannot write {}: {e}", dir.join(name).display());
        }
    }
    let mut membership = shared.membership.clone();
    loop {
        let text = hosts(&membership.borrow_and_update());
        if let Err(e) = write_atomically(&dir.join("hosts"), &text).await {
            warn!("cannot write {}: {e}", dir.join("hosts").display());
        }
        if membership.changed().await.is_err() {
            return;
        }
    }
}

/// Mode of the files: readable by every user, so processes of the node that
/// dropped root read them too (whatever the runtime's umask).
const FILE_MODE: u32 = 0o644;

async fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(FILE_MODE)).await?;
    tokio::fs::rename(&tmp, path).await
}
