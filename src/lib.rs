//! portbot: a ChatOps bot that brings an internal developer portal's self-service actions into
//! chat. See README.md for the architecture; `core` holds the rules, `app` is the one door to
//! them, `store` owns sled, `backends` invoke actions, and `api`, `cli`, `slack` and `github` (its webhook) are adapters.

pub mod api;
pub mod app;
pub mod backends;
pub mod cli;
pub mod config;
pub mod core;
pub mod definitions;
pub mod github;
pub mod metrics;
pub mod slack;
pub mod startup;
pub mod store;
pub mod telemetry;
