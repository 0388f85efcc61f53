//! The Baton appliance: configuration, backplane, volumes, controllers and services.

pub mod admin;
pub use ::backplane;
pub mod bench;
pub mod block;
pub mod config;
pub use ::controller;
pub mod logging;
pub mod reload;
pub mod serve;
pub use ::stream;
