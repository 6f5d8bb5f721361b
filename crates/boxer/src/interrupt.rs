//! Ctrl-C and SIGTERM for long client-side runs (`boxer bench --provider
//! lambda`, `boxer map`): the first asks the run to stop, so that it can
//! delete its clusters (which stops their nodes) and say so; a second exits
//! at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{SignalKind, signal};

/// Exit code after an interrupt (the shell's 128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Whether Ctrl-C or SIGTERM came; clones share it.
#[derive(Clone)]
pub struct Interrupt {
    fired: Arc<AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
}

impl Interrupt {
    /// Starts listening; on a second signal prints `second` and exits
    /// with [`EXIT_INTERRUPTED`].
    pub fn new(second: &'static str) -> std::io::Result<Self> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let this = Self { fired: Arc::default(), notify: Arc::default() };
        let handle = this.clone();
        tokio::spawn(async move {
            for n in 0.. {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                if n > 0 {
                    eprintln!("{second}");
                    std::process::exit(EXIT_INTERRUPTED);
                }
                handle.fired.store(true, Ordering::SeqCst);
                handle.notify.notify_waiters();
            }
        });
        Ok(this)
    }

    /// Whether a signal came.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Returns when a signal has come.
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        if self.fired() {
            return;
        }
        notified.await;
    }
}
