//! The connector's configuration: one TOML file read by the supervisor only. This crate holds its
//! schema (the reference for every key), and turns it into the slices each child process receives.
//!
//! Trust: the file is operator input and may be wrong in every way; every problem is reported, none
//! panics. Secrets are kept in [`Secret`], which never prints its value. No `unsafe`.
#![forbid(unsafe_code)]

mod schema;
mod secret;

pub use schema::*;
pub use secret::Secret;
