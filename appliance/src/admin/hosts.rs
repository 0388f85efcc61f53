//! Allowed hosts at run time: `POST` / `DELETE /api/v1/subsystems/{nqn}/hosts/{hostnqn}`
//! (`baton ctl host add|remove`). A removed host is refused on its next Connect; its
//! associations stay up until they end.

use crate::block::BlockService;

/// `Some((subsystem, host))` for `/api/v1/subsystems/{nqn}/hosts/{hostnqn}`.
pub(super) fn host_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/v1/subsystems/")?;
    let (nqn, host) = rest.split_once("/hosts/")?;
    (!nqn.is_empty() && !host.is_empty() && !nqn.contains('/') && !host.contains('/'))
        .then_some((nqn, host))
}

/// Adds (`allow`) or removes a host; says what happened.
pub(super) fn change(
    block: &BlockService,
    nqn: &str,
    host: &str,
    allow: bool,
) -> Result<String, String> {
    let access = block.target().access();
    let r = if allow {
        access.add_host(nqn, host)
    } else {
        access.remove_host(nqn, host)
    };
    match (r.map_err(|e| e.to_string())?, allow) {
        (true, true) => Ok(format!("{nqn}: {host} allowed\n")),
        (false, true) => Ok(format!("{nqn}: {host} was already allowed\n")),
        (true, false) => Ok(format!(
            "{nqn}: {host} removed (refused on its next connect; connected associations stay)\n"
        )),
        (false, false) => Err(format!("{nqn}: {host} is not an allowed host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_parse() {
        assert_eq!(
            host_path("/api/v1/subsystems/nqn.a:b/hosts/nqn.h:1"),
            Some(("nqn.a:b", "nqn.h:1"))
        );
        assert_eq!(host_path("/api/v1/subsystems/nqn.a:b/hosts/"), None);
        assert_eq!(host_path("/api/v1/subsystems/x/y/hosts/z"), None);
        assert_eq!(host_path("/api/v1/controllers/0/ana/1/optimized"), None);
    }
}
