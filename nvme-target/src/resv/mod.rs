//! Persistent reservations (Base 8.19): the shared state per namespace ([`state`]), the
//! notifications to controllers ([`notices`]) and the commands ([`cmds`]).
//!
//! "Persistent" is the spec's name: Baton keeps reservations in memory across every
//! controller, path and thread, not across a restart of the appliance (Persist Through Power
//! Loss is not offered: RESCAP bit 0 clear, CPTPL = 11b refused, PTPLS 0).

mod cmds;
pub(crate) mod notices;
pub(crate) mod state;

pub(crate) use cmds::check_length;
