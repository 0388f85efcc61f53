//! The Baton appliance: configuration, backplane, volumes, controllers and services.
