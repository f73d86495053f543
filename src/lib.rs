//! streammask: an egress proxy for the Claude API that masks secrets in requests and in
//! streamed responses.
//!
//! Layers, bottom up: [`rules`] (data) → [`matcher`] (Hyperscan + regex) → [`masker`] (block and
//! streaming masking with placeholders from [`placeholder`]).

pub mod api;
pub mod audit;
pub mod auth;
pub mod check;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod events;
pub mod identity;
pub mod json_walk;
pub mod masker;
pub mod matcher;
pub mod placeholder;
pub mod policy;
pub mod proxy;
pub mod response;
pub mod rules;
pub mod server;
pub mod sse;
pub mod tls;

pub use masker::{Engine, Finding, Masked, StreamMasker};
pub use rules::{Action, Rule, RuleSet, Scope};
