//! An isolated network namespace for tests that carry overlay traffic.
//!
//! [`enter_isolated_namespace`] must run before the test harness starts any
//! thread (call it from an `.init_array` constructor, see
//! [`isolate_this_test_binary!`]): it moves the whole test process into a new
//! network namespace with only a loopback interface, so every child it starts
//! (rendezvous, runtimes, apps) lives there too and nothing can leave the
//! machine. As root only a network namespace is created; otherwise a user
//! namespace too, mapping the caller to root inside it.

use std::sync::OnceLock;

static FAILURE: OnceLock<String> = OnceLock::new();

/// Enters a fresh network namespace and brings its loopback up. Errors are
/// kept and reported by [`require_isolation`].
pub fn enter_isolated_namespace() {
    if let Err(e) = enter() {
        let _ = FAILURE.set(e);
    }
}

/// Panics with the reason if the namespace could not be entered.
pub fn require_isolation() {
    if let Some(e) = FAILURE.get() {
        panic!("cannot isolate the test in its own network namespace: {e}");
    }
}

fn enter() -> Result<(), String> {
    boxer::netns::enter()
}

/// Puts this test binary in an isolated network namespace before `main`.
#[macro_export]
macro_rules! isolate_this_test_binary {
    () => {
        extern "C" fn __boxer_isolate() {
            $crate::lab::enter_isolated_namespace();
        }
        #[used]
        #[unsafe(link_section = ".init_array")]
        static __BOXER_ISOLATE: extern "C" fn() = __boxer_isolate;
    };
}
