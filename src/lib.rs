//! streammask: an egress proxy for the Claude API that masks secrets in requests and in
//! streamed responses.
//!
//! Layers, bottom up; a module imports only modules before it (`tests/layers.rs` enforces it):
//!
//! - [`config_error`]: the one error of configuration validation (a leaf);
//! - [`engine`]: rules, Hyperscan matcher, block and streaming maskers, placeholders, the JSON
//!   walker, `rules check` — knows nothing of HTTP;
//! - [`anthropic`]: the Claude API's shapes — routes and errors, SSE framing, the masked
//!   Messages stream, tool calls, JSON Lines, usage, transcripts;
//! - [`policy`]: who is calling and what applies to them — authentication, identity,
//!   profiles, upstream credentials, trusted CAs;
//! - [`exchange`]: the record of one request, filled by the proxy, read by observability;
//! - [`observe`]: the log line, Prometheus metrics and the audit log, read from an exchange;
//! - [`config`]: the config file → a validated [`config::Config`];
//! - [`proxy`]: the Pingora `ProxyHttp` glue — admission, upstream, response streaming;
//! - [`app`]: start-up, the admin listener and the CLI.

pub mod anthropic;
pub mod app;
pub mod config;
pub mod config_error;
pub mod engine;
pub mod exchange;
pub mod observe;
pub mod policy;
pub mod proxy;

pub use engine::{Action, Engine, Finding, Masked, Rule, RuleSet, Scope, StreamMasker};
