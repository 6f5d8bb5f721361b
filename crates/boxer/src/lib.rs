//! The `boxer` command line, as a library for tests.

pub mod netns;
pub mod spec;
