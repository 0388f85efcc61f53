//! Namespaces at run time: `POST /api/v1/subsystems/{nqn}/namespaces/{nsid}?volume=V`
//! (`&ana_group=G`, default 1) and `DELETE /api/v1/subsystems/{nqn}/namespaces/{nsid}`
//! (`baton ctl namespace add|remove`). Connected hosts get a Namespace Attribute Changed
//! notice and rescan; nothing reconnects.

use crate::block::{BlockService, ChangeError};
use crate::config::NamespaceConfig;

/// `Some((subsystem, nsid))` for `/api/v1/subsystems/{nqn}/namespaces/{nsid}`; the ID may
/// be malformed (a 400, not a 404).
pub(super) fn namespace_path(path: &str) -> Option<(&str, Result<u32, String>)> {
    let rest = path.strip_prefix("/api/v1/subsystems/")?;
    let (nqn, nsid) = rest.split_once("/namespaces/")?;
    if nqn.is_empty() || nqn.contains('/') || nsid.is_empty() || nsid.contains('/') {
        return None;
    }
    Some((
        nqn,
        nsid.parse()
            .map_err(|_| format!("namespace ID `{nsid}` is not a number")),
    ))
}

/// The namespace a `POST`'s query describes (`volume=V`, optional `ana_group=G`).
pub(super) fn parse_query(nsid: u32, query: Option<&str>) -> Result<NamespaceConfig, String> {
    let mut volume = None;
    let mut ana_group = 1;
    for (k, v) in super::http::query_pairs(query) {
        match k {
            "volume" if !v.is_empty() => volume = Some(v.to_owned()),
            "ana_group" => {
                ana_group = v
                    .parse()
                    .map_err(|_| format!("ana_group `{v}` is not a number"))?;
            }
            _ => {
                return Err(format!(
                    "unknown or empty parameter `{k}` (volume, ana_group)"
                ));
            }
        }
    }
    let volume = volume.ok_or("give the volume: ?volume=NAME")?;
    Ok(NamespaceConfig {
        nsid,
        volume,
        ana_group,
    })
}

/// Adds (`ns` given) or removes namespace `nsid`; says what happened, or why not (with
/// whether the subsystem or namespace was not found: [`ChangeError::NotFound`]).
pub(super) fn change(
    block: &BlockService,
    nqn: &str,
    nsid: u32,
    add: Option<NamespaceConfig>,
) -> Result<String, ChangeError> {
    match add {
        Some(ns) => {
            let volume = ns.volume.clone();
            block
                .add_namespace(nqn, ns)
                .map(|()| format!("{nqn}: namespace {nsid} added (volume {volume})\n"))
        }
        None => block
            .remove_namespace(nqn, nsid)
            .map(|()| format!("{nqn}: namespace {nsid} removed\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_paths_parse() {
        assert_eq!(
            namespace_path("/api/v1/subsystems/nqn.a:b/namespaces/3"),
            Some(("nqn.a:b", Ok(3)))
        );
        assert!(matches!(
            namespace_path("/api/v1/subsystems/nqn.a:b/namespaces/x"),
            Some(("nqn.a:b", Err(_)))
        ));
        assert_eq!(
            namespace_path("/api/v1/subsystems/nqn.a:b/namespaces/"),
            None
        );
        assert_eq!(namespace_path("/api/v1/subsystems/a/b/namespaces/1"), None);
        assert_eq!(namespace_path("/api/v1/subsystems/nqn.a:b/hosts/h"), None);
    }

    #[test]
    fn queries_name_the_volume() {
        let ns = parse_query(2, Some("volume=v1&ana_group=3")).unwrap();
        assert_eq!((ns.nsid, ns.volume.as_str(), ns.ana_group), (2, "v1", 3));
        assert_eq!(parse_query(2, Some("volume=v1")).unwrap().ana_group, 1);
        assert!(parse_query(2, None).is_err());
        assert!(parse_query(2, Some("volume=")).is_err());
        assert!(parse_query(2, Some("volume=v&group=1")).is_err());
        assert!(parse_query(2, Some("volume=v&ana_group=x")).is_err());
    }
}
