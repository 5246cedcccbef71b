//! What every chat platform shares, written once: answering a `/port` command (`answer`), the
//! form for missing inputs (`form`), the data of the messages about a run (`view`), and the
//! outbox consumers that post run cards, threads and approval requests (`delivery`).
//!
//! The platform adapters (`slack`, `discord`) verify and parse their requests into these calls,
//! and render the results in their own idiom from `message-templates/<platform>/`.

pub mod answer;
pub mod delivery;
pub mod form;
pub mod messages;
pub mod pace;
pub mod view;

pub use answer::{answer, Asker, ChatAnswer};
pub use delivery::{Approvals, CardUpdate, Surface, Threads};
pub use form::{FormState, Submitted};
