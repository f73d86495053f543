//! The application: start-up ([`server`]: validated config → engines, policy, observability →
//! the Pingora server; [`limits`]: the open-file limit), hot reload ([`reload`]), the graceful
//! drain and upgrade ([`shutdown`]), the admin listener ([`admin`]) and the command line
//! ([`cli`]).
//!
//! Layer: the top. It may import every other layer and nothing imports it; `main.rs` only
//! hands over to [`cli::main`]. `anyhow` is used here and nowhere below.

pub mod admin;
pub mod approvals_cli;
pub mod cli;
pub mod console;
pub mod limits;
pub mod reload;
pub mod server;
pub mod shutdown;
