//! The data-set parsers on arbitrary bytes: IDX images and labels, CIFAR-10 records, each
//! also behind gzip detection. Parsed results must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mixprec_data::formats::{decompress_if_gz, parse_cifar10, parse_idx_images, parse_idx_labels};
use std::path::Path;

fn check(bytes: &[u8], p: &Path) {
    if let Ok(im) = parse_idx_images(bytes, p) {
        assert_eq!(
            im.data.len() as u128,
            im.n as u128 * im.rows as u128 * im.cols as u128
        );
    }
    if let Ok(l) = parse_idx_labels(bytes, p) {
        assert_eq!(l.len() + 8, bytes.len());
    }
    if let Ok(c) = parse_cifar10(bytes, p) {
        assert_eq!(c.labels.len(), c.n);
        assert_eq!(c.pixels.len(), c.n * 3 * 32 * 32);
    }
}

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz-input");
    check(data, p);
    if let Ok(raw) = decompress_if_gz(data.to_vec(), p) {
        check(&raw, p);
    }
});
