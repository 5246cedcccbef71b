//! portbot: a ChatOps bot that brings an internal developer portal's self-service actions into
//! chat. See README.md for the architecture; `core` holds the rules, `app` is the one door to
//! them, `store` owns sled, `backends` invoke actions, `chat` is what the chat platforms
//! share, and `api`, `cli`, `slack`, `discord` and `github` (its webhook) are adapters.

pub mod allocator;
pub mod api;
pub mod app;
pub mod backends;
pub mod chat;
pub mod cli;
pub mod config;
pub mod core;
pub mod definitions;
pub mod discord;
#[cfg(test)]
mod edge_input;
pub mod github;
pub mod metrics;
pub mod slack;
pub mod startup;
pub mod store;
pub mod telemetry;
