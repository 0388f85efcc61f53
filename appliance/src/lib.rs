//! The Baton appliance: configuration, backplane, volumes, controllers and services.

pub mod config;
pub mod backplane;
