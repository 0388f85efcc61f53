//! Physical Region Page entries and lists (NVMe Base Specification 2.0, section 4.1.1).

/// Memory page size the driver configures (CC.MPS = 0).
pub const PAGE_SIZE: usize = 4096;
const PAGE: u64 = PAGE_SIZE as u64;
/// PRP entries in one list page.
pub const ENTRIES_PER_PAGE: usize = PAGE_SIZE / 8;

/// Number of memory pages touched by `len` bytes starting at `iova`.
pub fn pages_spanned(iova: u64, len: usize) -> usize {
    let offset = (iova % PAGE) as usize;
    (offset + len).div_ceil(PAGE_SIZE).max(1)
}

/// Number of PRP list pages a transfer of `len` bytes at `iova` needs.
pub fn list_pages_needed(iova: u64, len: usize) -> usize {
    let pages = pages_spanned(iova, len);
    if pages <= 2 {
        return 0;
    }
    let mut entries = pages - 1;
    let mut lists = 1;
    while entries > ENTRIES_PER_PAGE {
        entries -= ENTRIES_PER_PAGE - 1;
        lists += 1;
    }
    lists
}

/// Builds PRP1/PRP2 for the host-contiguous DMA range `iova..iova+len`.
///
/// When a list is needed, its entries are written with `put(index, value)` into the list
/// area starting at `list_iova` (page aligned, [`list_pages_needed`] pages): index `i` lives
/// at `list_iova + 8 * i`. The last slot of a full list page chains to the next page.
pub fn build(iova: u64, len: usize, list_iova: u64, mut put: impl FnMut(usize, u64)) -> (u64, u64) {
    let pages = pages_spanned(iova, len);
    let first_page = iova - iova % PAGE;
    match pages {
        1 => (iova, 0),
        2 => (iova, first_page + PAGE),
        _ => {
            let mut remaining = pages - 1;
            let mut next_page = first_page + PAGE;
            let mut slot = 0usize;
            while remaining > 0 {
                let in_page = slot % ENTRIES_PER_PAGE;
                if in_page == ENTRIES_PER_PAGE - 1 && remaining > 1 {
                    put(slot, list_iova + ((slot + 1) * 8) as u64);
                } else {
                    put(slot, next_page);
                    next_page += PAGE;
                    remaining -= 1;
                }
                slot += 1;
            }
            (iova, list_iova)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Walks PRPs like a controller would and returns the data ranges.
    fn walk(prp1: u64, prp2: u64, len: usize, list: &BTreeMap<u64, u64>) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        let first = len.min(PAGE_SIZE - (prp1 % PAGE) as usize);
        out.push((prp1, first));
        let mut left = len - first;
        if left == 0 {
            return out;
        }
        if left <= PAGE_SIZE {
            assert_eq!(prp2 % PAGE, 0);
            out.push((prp2, left));
            return out;
        }
        let mut at = prp2;
        while left > 0 {
            let entry = list[&at];
            let last_slot = (at % PAGE) as usize == PAGE_SIZE - 8;
            if last_slot && left > PAGE_SIZE {
                at = entry;
                continue;
            }
            assert_eq!(entry % PAGE, 0, "data entries are page aligned");
            let n = left.min(PAGE_SIZE);
            out.push((entry, n));
            left -= n;
            at += 8;
        }
        out
    }

    fn check(iova: u64, len: usize) -> usize {
        let list_iova = 0x9000_0000;
        let mut list = BTreeMap::new();
        let (p1, p2) = build(iova, len, list_iova, |i, v| {
            list.insert(list_iova + 8 * i as u64, v);
        });
        let ranges = walk(p1, p2, len, &list);
        let mut expect = iova;
        for (addr, n) in &ranges {
            assert_eq!(*addr, expect, "contiguous coverage");
            expect += *n as u64;
        }
        assert_eq!(expect, iova + len as u64);
        let used_pages = list
            .keys()
            .map(|a| (a - list_iova) / PAGE)
            .max()
            .map_or(0, |p| usize::try_from(p).unwrap() + 1);
        assert_eq!(used_pages, list_pages_needed(iova, len));
        list.len()
    }

    #[test]
    fn one_page_needs_no_prp2() {
        assert_eq!(build(0x10_0000, 4096, 0, |_, _| panic!()), (0x10_0000, 0));
        assert_eq!(build(0x10_0200, 512, 0, |_, _| panic!()), (0x10_0200, 0));
        assert_eq!(check(0x10_0000, 512), 0);
    }

    #[test]
    fn two_pages_use_prp2_directly() {
        assert_eq!(
            build(0x10_0000, 8192, 0, |_, _| panic!()),
            (0x10_0000, 0x10_1000)
        );
        // Unaligned: 512 bytes before the boundary and 512 after.
        assert_eq!(
            build(0x10_0e00, 1024, 0, |_, _| panic!()),
            (0x10_0e00, 0x10_1000)
        );
        assert_eq!(check(0x10_0e00, 4096), 0);
    }

    #[test]
    fn three_pages_use_a_list() {
        assert_eq!(check(0x10_0000, 3 * 4096), 2);
        assert_eq!(check(0x10_0200, 2 * 4096), 2);
        assert_eq!(check(0x10_0000, 128 << 10), 31);
    }

    #[test]
    fn list_crossing_a_page_chains() {
        // 514 pages: 513 entries do not fit one list page.
        assert_eq!(list_pages_needed(0, 514 * 4096), 2);
        assert_eq!(check(0x20_0000, 514 * 4096), 514);
        assert_eq!(list_pages_needed(0, 513 * 4096), 1);
        assert_eq!(check(0x20_0000, 513 * 4096), 512);
        assert_eq!(check(0x20_0400, 4 << 20), 1024 + 2);
    }
}
