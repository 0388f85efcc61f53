//! `baton`: the appliance daemon and its command-line interface.

fn main() {}
