//! Physical Region Page entries (Base 4.1.1): PRP1, PRP2 and PRP lists.

use ffi::DmaRegion;

use crate::{DriverError, PAGE};

/// PRP1 and PRP2 for `len` bytes at byte `offset` of `data`; transfers spanning more than two
/// pages get a PRP list written into `list` (one page: up to 512 entries).
pub(crate) fn build(
    data: &DmaRegion,
    offset: usize,
    len: usize,
    list: &DmaRegion,
) -> Result<(u64, u64), DriverError> {
    if len == 0 || offset + len > data.len() {
        return Err(DriverError::Invalid(format!(
            "transfer of {len} bytes at {offset} is outside the buffer"
        )));
    }
    let start = data.iova() + offset as u64;
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
