//! The platform-neutral core: plain rules with no I/O, no HTTP and no chat platform types.
//!
//! Everything above it (the app service, the store, the adapters) asks the core to decide and
//! then carries the decision out. Each module is tested on its own with plain unit tests.

pub mod access;
pub mod action;
pub mod catalog;
pub mod chat_command;
pub mod command_text;
pub mod gitops;
pub mod iac;
pub mod ids;
pub mod run;
pub mod schema;
pub mod template;
pub mod timestamp;
