//! Physical Region Page entries (Base 4.1.1): PRP1, PRP2 and PRP lists.

use ffi::DmaRegion;

use crate::{DriverError, PAGE};

/// PRP1 and PRP2 for `len` bytes of DMA memory contiguous at device address `start`;
/// transfers spanning more than two pages get a PRP list written into `list` (one page: up to
/// 512 entries).
pub(crate) fn build(start: u64, len: usize, list: &DmaRegion) -> Result<(u64, u64), DriverError> {
    if len == 0 {
        return Err(DriverError::Invalid("an empty transfer".into()));
    }
    if start % 4 != 0 {
        return Err(DriverError::Invalid(
            "PRP data must be dword aligned".into(),
        ));
    }
    let page = PAGE as u64;
    let first_len = (page - start % page).min(len as u64);
    let prp1 = start;
    let rest = len as u64 - first_len;
    if rest == 0 {
        return Ok((prp1, 0));
    }
    let second = start - start % page + page;
    if rest <= page {
        return Ok((prp1, second));
    }
    let pages = rest.div_ceil(page);
    if pages > (list.len() / 8) as u64 {
        return Err(DriverError::Invalid(format!(
            "transfer of {len} bytes needs more than one PRP list page"
        )));
    }
    for i in 0..pages {
        list.write(
            usize::try_from(i).unwrap_or(0) * 8,
            &(second + i * page).to_le_bytes(),
        );
    }
    Ok((prp1, list.iova()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ffi::{DmaBacking, DmaRegion, VecBacking};

    use super::*;

    fn region(len: usize, iova: u64) -> DmaRegion {
        let b: Arc<dyn DmaBacking> = Arc::new(VecBacking::new(len));
        DmaRegion::new(b, 0, len, iova)
    }

    fn entry(list: &DmaRegion, i: usize) -> u64 {
        let mut e = [0u8; 8];
        list.read(i * 8, &mut e);
        u64::from_le_bytes(e)
    }

    #[test]
    fn one_page_needs_only_prp1() {
        let data = region(64 * 1024, 0x10_0000);
        let list = region(PAGE, 0x90_0000);
        assert_eq!(build(data.iova(), PAGE, &list).unwrap(), (0x10_0000, 0));
        assert_eq!(
            build(data.iova() + 512, 512, &list).unwrap(),
            (0x10_0200, 0)
        );
    }

    #[test]
    fn two_pages_use_prp2_as_the_second_page() {
        let data = region(64 * 1024, 0x10_0000);
        let list = region(PAGE, 0x90_0000);
        assert_eq!(
            build(data.iova(), 2 * PAGE, &list).unwrap(),
            (0x10_0000, 0x10_1000)
        );
        // Unaligned start: the first entry covers the rest of its page, PRP2 the next page.
        assert_eq!(
            build(data.iova() + 3072, 2048, &list).unwrap(),
            (0x10_0c00, 0x10_1000)
        );
    }

    #[test]
    fn longer_transfers_use_a_list_crossing_page_boundaries() {
        let data = region(64 * 1024, 0x10_0000);
        let list = region(PAGE, 0x90_0000);
        let (p1, p2) = build(data.iova() + 1024, 3 * PAGE, &list).unwrap();
        assert_eq!((p1, p2), (0x10_0400, 0x90_0000));
        assert_eq!(entry(&list, 0), 0x10_1000);
        assert_eq!(entry(&list, 1), 0x10_2000);
        assert_eq!(entry(&list, 2), 0x10_3000);
    }

    #[test]
    fn bad_requests_are_refused() {
        let data = region(64 * 1024, 0x10_0000);
        let list = region(PAGE, 0x90_0000);
        assert!(
            build(data.iova() + 2, 512, &list).is_err(),
            "not dword aligned"
        );
        assert!(build(data.iova(), 0, &list).is_err(), "empty");
        let small_list = region(8, 0x90_0000);
        assert!(
            build(data.iova(), 4 * PAGE, &small_list).is_err(),
            "list too small"
        );
    }
}
