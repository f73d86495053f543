//! The Claude API as streammask reads and writes it: routes and the error shape
//! ([`api`]), Server-Sent Events framing ([`sse`]), the masked Messages stream ([`messages`],
//! with the hand-read wire forms in `compact` and tool calls judged whole in [`tools`]),
//! the same stream as Amazon Bedrock frames it ([`bedrock`], over the AWS [`event_stream`]
//! codec), JSON Lines batch results ([`jsonl`]), batch objects ([`batches`]), token [`usage`],
//! originals of masked thinking kept for their return ([`thinking_vault`]), shell commands of
//! tool calls judged by parsing them ([`shell`]), placeholders given back to their owner's
//! tool calls ([`restore`]) and response [`transcript`]s.
//!
//! Layer: above the engine, which it drives; below everything that knows about callers,
//! policy, observability or Pingora. It may import only `engine` (`tests/layers.rs`).

pub mod api;
pub mod batches;
pub mod bedrock;
mod compact;
pub mod event_stream;
pub mod jsonl;
pub mod messages;
pub mod restore;
pub(crate) mod scan_value;
pub mod shell;
pub mod sse;
pub mod thinking_vault;
pub mod tools;
pub mod transcript;
pub mod usage;
