//! File formats: IDX (MNIST, Fashion-MNIST) and the CIFAR-10 binary batch, raw or gzipped.
//!
//! Survey: no section (input data only). Compression is detected by the gzip magic bytes
//! `1f 8b`, never by the file extension. Cost: O(file size) time and memory.

use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

/// IDX magic of an unsigned-byte, 3-dimensional (images) file.
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic of an unsigned-byte, 1-dimensional (labels) file.
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;
/// Size of one CIFAR-10 record: 1 label byte + 3 planes of 32×32.
pub const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// Images of an IDX file: `n` images of `rows × cols` bytes, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub n: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `n × rows × cols` pixel bytes.
    pub data: Vec<u8>,
}

/// Records of a CIFAR-10 binary batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CifarRecords {
    /// Number of records.
    pub n: usize,
    /// One label per record.
    pub labels: Vec<u8>,
    /// `n × 3 × 32 × 32` pixel bytes (R, G, B planes, each row-major).
    pub pixels: Vec<u8>,
}

/// Reads a whole file and gunzips it when it starts with the gzip magic.
///
/// `dataset` names the data set in a "not found" error.
pub fn read_maybe_gz(path: &Path, dataset: &str) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, dataset, e))?;
    decompress_if_gz(raw, path)
}

/// Gunzips `raw` when it starts with the gzip magic; returns it unchanged otherwise.
pub fn decompress_if_gz(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|source| DataError::Gzip {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn check_len(path: &Path, bytes: &[u8], expected: u64) -> Result<()> {
    let actual = bytes.len() as u64;
    if actual < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            actual,
        });
    }
    if actual > expected {
        return Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            expected,
            extra: actual - expected,
        });
    }
    Ok(())
}

fn check_magic(path: &Path, bytes: &[u8], what: &'static str, expected: u32) -> Result<()> {
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: 4,
            actual: bytes.len() as u64,
        });
    }
    let found = be_u32(bytes, 0);
    if found != expected {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            what,
            found,
            expected,
        });
    }
    Ok(())
}

/// Parses decompressed IDX images bytes (magic 0x803, then count, rows, cols, then pixels).
/// `path` is only used in error messages.
pub fn parse_idx_images(bytes: &[u8], path: &Path) -> Result<IdxImages> {
    check_magic(path, bytes, "images", IDX_IMAGES_MAGIC)?;
    if bytes.len() < 16 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: 16,
            actual: bytes.len() as u64,
        });
    }
    let n = be_u32(bytes, 4) as usize;
    let rows = be_u32(bytes, 8) as usize;
    let cols = be_u32(bytes, 12) as usize;
    // Three 32-bit counts can overflow 64 bits: such a header can never match the file.
    let expected = (n as u64)
        .checked_mul(rows as u64)
        .and_then(|x| x.checked_mul(cols as u64))
        .and_then(|x| x.checked_add(16))
        .unwrap_or(u64::MAX);
    check_len(path, bytes, expected)?;
    Ok(IdxImages {
        n,
        rows,
        cols,
        data: bytes[16..].to_vec(),
    })
}

/// Parses decompressed IDX labels bytes (magic 0x801, then count, then labels).
/// `path` is only used in error messages.
pub fn parse_idx_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    check_magic(path, bytes, "labels", IDX_LABELS_MAGIC)?;
    if bytes.len() < 8 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: 8,
            actual: bytes.len() as u64,
        });
    }
    let n = be_u32(bytes, 4) as u64;
    check_len(path, bytes, 8 + n)?;
    Ok(bytes[8..].to_vec())
}

/// Reads an IDX images file (raw or gzipped).
pub fn read_idx_images(path: &Path) -> Result<IdxImages> {
    let bytes = read_maybe_gz(path, "IDX images")?;
    parse_idx_images(&bytes, path)
}

/// Reads an IDX labels file (raw or gzipped).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path, "IDX labels")?;
    parse_idx_labels(&bytes, path)
}

/// Parses decompressed CIFAR-10 binary bytes: records of 1 label byte then R, G, B planes.
/// Labels must be below 10. `path` is only used in error messages.
pub fn parse_cifar10(bytes: &[u8], path: &Path) -> Result<CifarRecords> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD) {
        return Err(DataError::BadCifarSize {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
        });
    }
    let n = bytes.len() / CIFAR_RECORD;
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * (CIFAR_RECORD - 1));
    for (i, rec) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
        if rec[0] >= 10 {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                index: i,
                label: u32::from(rec[0]),
                n_classes: 10,
            });
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(CifarRecords { n, labels, pixels })
}

/// Reads a CIFAR-10 binary batch (`test_batch.bin` or `test_batch.bin.gz`).
pub fn read_cifar10(path: &Path) -> Result<CifarRecords> {
    let bytes = read_maybe_gz(path, "CIFAR-10")?;
    parse_cifar10(&bytes, path)
}

/// Encodes IDX images bytes (uncompressed); the inverse of [`parse_idx_images`].
pub fn encode_idx_images(n: usize, rows: usize, cols: usize, data: &[u8]) -> Result<Vec<u8>> {
    if data.len() != n * rows * cols {
        return Err(DataError::InvalidArgument(format!(
            "IDX images: {} bytes given for {n} images of {rows}x{cols}",
            data.len()
        )));
    }
    let dims = [n, rows, cols];
    if dims.iter().any(|&d| u32::try_from(d).is_err()) {
        return Err(DataError::InvalidArgument(
            "IDX images: a dimension does not fit in u32".into(),
        ));
    }
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IDX_IMAGES_MAGIC.to_be_bytes());
    for d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}

/// Encodes IDX labels bytes (uncompressed); the inverse of [`parse_idx_labels`].
pub fn encode_idx_labels(labels: &[u8]) -> Result<Vec<u8>> {
    let n = u32::try_from(labels.len())
        .map_err(|_| DataError::InvalidArgument("IDX labels: count does not fit in u32".into()))?;
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&IDX_LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(labels);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_roundtrip_and_errors() {
        let p = Path::new("x.idx");
        let data: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        let enc = encode_idx_images(2, 3, 4, &data).unwrap();
        let dec = parse_idx_images(&enc, p).unwrap();
        assert_eq!((dec.n, dec.rows, dec.cols), (2, 3, 4));
        assert_eq!(dec.data, data);
        assert!(matches!(
            parse_idx_images(&enc[..enc.len() - 1], p),
            Err(DataError::Truncated {
                expected: 40,
                actual: 39,
                ..
            })
        ));
        assert!(matches!(
            parse_idx_images(&enc[..10], p),
            Err(DataError::Truncated { expected: 16, .. })
        ));
        assert!(matches!(
            parse_idx_labels(&enc, p),
            Err(DataError::BadMagic {
                found: 0x803,
                expected: 0x801,
                ..
            })
        ));
        let mut long = enc.clone();
        long.push(0);
        assert!(matches!(
            parse_idx_images(&long, p),
            Err(DataError::TrailingBytes { extra: 1, .. })
        ));
        let lab = encode_idx_labels(&[1, 2, 3]).unwrap();
        assert_eq!(parse_idx_labels(&lab, p).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn cifar_layout_and_errors() {
        let p = Path::new("c.bin");
        let mut bytes = vec![0u8; 2 * CIFAR_RECORD];
        bytes[0] = 7;
        bytes[1] = 11; // R(0,0) of image 0
        bytes[1 + 1024] = 22; // G(0,0)
        bytes[CIFAR_RECORD] = 2;
        bytes[CIFAR_RECORD + 1 + 2048 + 1023] = 33; // B(31,31) of image 1
        let r = parse_cifar10(&bytes, p).unwrap();
        assert_eq!(r.n, 2);
        assert_eq!(r.labels, vec![7, 2]);
        assert_eq!(r.pixels[0], 11);
        assert_eq!(r.pixels[1024], 22);
        assert_eq!(r.pixels[3072 + 2048 + 1023], 33);
        assert!(matches!(
            parse_cifar10(&bytes[..3000], p),
            Err(DataError::BadCifarSize { len: 3000, .. })
        ));
        bytes[CIFAR_RECORD] = 10;
        assert!(matches!(
            parse_cifar10(&bytes, p),
            Err(DataError::BadLabel {
                index: 1,
                label: 10,
                ..
            })
        ));
    }
}
