//! The `boxer` command line, as a library for tests.

pub mod bench;
pub mod control;
pub mod interrupt;
pub mod lab;
pub mod lambda;
pub mod map;
pub mod netns;
pub mod printer;
pub mod provider;
pub mod s3;
pub mod spec;
pub mod state;
pub mod up;
