//! Subsystems at run time: `POST /api/v1/subsystems/{nqn}` (`?allow_any_host=true`,
//! `&serial=S`, `&model=M`) and `DELETE /api/v1/subsystems/{nqn}` (`baton ctl subsystem
//! add|remove`). A new subsystem starts without namespaces or hosts (add them with the
//! namespace and host endpoints); a removed one's controllers are torn down at once.

use crate::block::{BlockService, ChangeError};
use crate::config::SubsystemConfig;

/// `Some(nqn)` for `/api/v1/subsystems/{nqn}`.
pub(super) fn subsystem_path(path: &str) -> Option<&str> {
    let nqn = path.strip_prefix("/api/v1/subsystems/")?;
    (!nqn.is_empty() && !nqn.contains('/')).then_some(nqn)
}

/// The subsystem a `POST`'s query describes.
pub(super) fn parse_query(nqn: &str, query: Option<&str>) -> Result<SubsystemConfig, String> {
    let mut s = SubsystemConfig {
        nqn: nqn.to_owned(),
        serial: None,
        model: "Baton".to_owned(),
        allow_any_host: false,
        allowed_hosts: Vec::new(),
        namespaces: Vec::new(),
    };
    for (k, v) in super::http::query_pairs(query) {
        match k {
            "allow_any_host" => {
                s.allow_any_host = v
                    .parse()
                    .map_err(|_| format!("allow_any_host `{v}` is not true or false"))?;
            }
            "serial" if !v.is_empty() => s.serial = Some(v.to_owned()),
            "model" if !v.is_empty() => s.model = v.to_owned(),
            _ => {
                return Err(format!(
                    "unknown or empty parameter `{k}` (allow_any_host, serial, model)"
                ));
            }
        }
    }
    Ok(s)
}

/// Adds (`add` given) or removes subsystem `nqn`; says what happened, or why not (with
/// whether it was not found: [`ChangeError::NotFound`]).
pub(super) fn change(
    block: &BlockService,
    nqn: &str,
    add: Option<SubsystemConfig>,
) -> Result<String, ChangeError> {
    match add {
        Some(s) => block
            .add_subsystem(s)
            .map(|()| format!("{nqn}: subsystem added (add namespaces and hosts next)\n")),
        None => block
            .remove_subsystem(nqn)
            .map(|()| format!("{nqn}: subsystem removed (its controllers were torn down)\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsystem_paths_and_queries_parse() {
        assert_eq!(
            subsystem_path("/api/v1/subsystems/nqn.a:b"),
            Some("nqn.a:b")
        );
        assert_eq!(subsystem_path("/api/v1/subsystems/nqn.a:b/hosts/h"), None);
        assert_eq!(subsystem_path("/api/v1/subsystems/"), None);
        let s = parse_query("nqn.a:b", Some("allow_any_host=true&serial=S1&model=M")).unwrap();
        assert!(s.allow_any_host);
        assert_eq!((s.serial.as_deref(), s.model.as_str()), (Some("S1"), "M"));
        let s = parse_query("nqn.a:b", None).unwrap();
        assert!(!s.allow_any_host && s.serial.is_none());
        assert!(parse_query("nqn.a:b", Some("allow_any_host=maybe")).is_err());
        assert!(parse_query("nqn.a:b", Some("hosts=1")).is_err());
    }
}
