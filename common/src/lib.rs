//! Code shared by every Komunikator service, by concern: the [`domain`]
//! (ids, drafts, limits, events, subjects); the [`adapters`] behind their
//! interfaces (store, bus, chat log, presence, counter, throttle); the
//! server [`edge`] (HTTP serving, accept loop, CORS, proxies, operational
//! endpoints); [`telemetry`] (logs, metrics, traces); [`accounts`]
//! (passwords, tokens); and [`support`] (causes, mutexes, configuration
//! problems, the data directory). Each option type lives with what it
//! configures. `scripts/module-deps.py` checks that no module imports one
//! that imports it back.

pub mod accounts;
pub mod adapters;
pub mod domain;
pub mod edge;
pub mod support;
pub mod telemetry;
