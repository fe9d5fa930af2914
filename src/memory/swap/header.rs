//! The Linux swap v1 header (what `mkswap` writes), built and checked by hand so a
//! scratch container without util-linux can make swap files.
//!
//! Layout of the first page (include/linux/swap.h, `union swap_header`): 1024 bytes of
//! boot bits, then native-endian u32 `version` (1), u32 `last_page`, u32 `nr_badpages`
//! (0), 16 bytes UUID, 16 bytes volume label; the magic "SWAPSPACE2" ends the page.

const BOOTBITS: usize = 1024;
const VERSION_AT: usize = BOOTBITS;
const LAST_PAGE_AT: usize = BOOTBITS + 4;
const BADPAGES_AT: usize = BOOTBITS + 8;
const UUID_AT: usize = BOOTBITS + 12;
const MAGIC: &[u8; 10] = b"SWAPSPACE2";

/// Smallest swap area mkswap accepts: 10 pages.
pub const MIN_PAGES: u64 = 10;

/// The first page of a swap area of `pages` pages (header page included).
pub fn build(page_size: usize, pages: u64, uuid: [u8; 16]) -> Result<Vec<u8>, String> {
    if pages < MIN_PAGES {
        return Err(format!(
            "a swap area needs at least {MIN_PAGES} pages ({} bytes)",
            MIN_PAGES * page_size as u64
        ));
    }
    let last_page = u32::try_from(pages - 1).map_err(|_| {
        format!(
            "a swap area can have at most {} pages ({} bytes)",
            u64::from(u32::MAX) + 1,
            (u64::from(u32::MAX) + 1) * page_size as u64
        )
    })?;
    let mut page = vec![0u8; page_size];
    page[VERSION_AT..VERSION_AT + 4].copy_from_slice(&1u32.to_ne_bytes());
    page[LAST_PAGE_AT..LAST_PAGE_AT + 4].copy_from_slice(&last_page.to_ne_bytes());
    page[BADPAGES_AT..BADPAGES_AT + 4].copy_from_slice(&0u32.to_ne_bytes());
    page[UUID_AT..UUID_AT + 16].copy_from_slice(&uuid);
    page[page_size - MAGIC.len()..].copy_from_slice(MAGIC);
    Ok(page)
}

/// Whether `first_page` is a v1 swap header for exactly `pages` pages.
pub fn is_valid(first_page: &[u8], page_size: usize, pages: u64) -> bool {
    if first_page.len() < page_size || page_size < BOOTBITS + 64 {
        return false;
    }
    let u32_at = |at: usize| {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&first_page[at..at + 4]);
        u32::from_ne_bytes(bytes)
    };
    &first_page[page_size - MAGIC.len()..page_size] == MAGIC
        && u32_at(VERSION_AT) == 1
        && u64::from(u32_at(LAST_PAGE_AT)) + 1 == pages
        && u32_at(BADPAGES_AT) == 0
}

/// A random (version 4) UUID; from the kernel's getrandom, else time and pid.
pub fn new_uuid() -> [u8; 16] {
    let mut uuid = [0u8; 16];
    // SAFETY: getrandom writes at most `uuid.len()` bytes into the buffer we own.
    let got = unsafe { libc::getrandom(uuid.as_mut_ptr().cast(), uuid.len(), 0) };
    if got != uuid.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mixed = nanos ^ (u128::from(std::process::id()) << 64);
        uuid = mixed.to_le_bytes();
    }
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_mkswap() {
        let uuid = new_uuid();
        let page = build(4096, 16384, uuid).unwrap();
        assert_eq!(page.len(), 4096);
        assert_eq!(&page[4086..], b"SWAPSPACE2");
        assert_eq!(&page[1024..1028], &1u32.to_ne_bytes());
        assert_eq!(&page[1028..1032], &16383u32.to_ne_bytes());
        assert_eq!(&page[1036..1052], &uuid);
        assert!(page[..1024].iter().all(|&b| b == 0));
        assert!(is_valid(&page, 4096, 16384));
        assert!(!is_valid(&page, 4096, 16385));
        assert!(!is_valid(&page[..100], 4096, 16384));
        assert_eq!(uuid[6] >> 4, 4);
    }

    #[test]
    fn header_rejects_tiny_and_huge_areas() {
        assert!(build(4096, 9, [0; 16])
            .unwrap_err()
            .contains("at least 10 pages"));
        assert!(build(4096, 1 << 33, [0; 16])
            .unwrap_err()
            .contains("at most"));
        assert_ne!(new_uuid(), new_uuid());
    }

    /// util-linux's own reader (Debian's essential util-linux) agrees with our header.
    #[test]
    fn swaplabel_reads_our_header() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("area");
        let uuid = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x81, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        let mut bytes = build(4096, 16, uuid).unwrap();
        bytes.resize(16 * 4096, 0);
        std::fs::write(&path, bytes).unwrap();
        let out = std::process::Command::new("swaplabel")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("12345678-9abc-4def-8123-456789abcdef"),
            "{text}"
        );
    }
}
