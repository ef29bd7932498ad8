//! NumPy `.npy` arrays (format versions 1–3) and `.npz` archives (a zip of `.npy` members),
//! enough for `mixprec run` and `--data FILE.npz`: reading float32, float64, int64, int32, uint8
//! and bool arrays in either byte order and memory order, from stored or deflated (`savez`,
//! `savez_compressed`) archives with zip64 sizes; writing float32, int64 and bool into stored
//! archives.

use anyhow::{bail, Context, Result};

/// Element type of an array as read from or written to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyType {
    /// `f4`.
    F32,
    /// `f8`.
    F64,
    /// `i8`.
    I64,
    /// `i4`.
    I32,
    /// `u1`.
    U8,
    /// `b1`.
    Bool,
}

impl NpyType {
    fn width(self) -> usize {
        match self {
            NpyType::F32 | NpyType::I32 => 4,
            NpyType::F64 | NpyType::I64 => 8,
            NpyType::U8 | NpyType::Bool => 1,
        }
    }

    /// NumPy's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            NpyType::F32 => "float32",
            NpyType::F64 => "float64",
            NpyType::I64 => "int64",
            NpyType::I32 => "int32",
            NpyType::U8 => "uint8",
            NpyType::Bool => "bool",
        }
    }

    /// True for floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, NpyType::F32 | NpyType::F64)
    }
}

/// Values of an array: floats widened or narrowed to f32, integers and booleans to i64.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// Float elements.
    F32(Vec<f32>),
    /// Integer or boolean elements.
    I64(Vec<i64>),
}

/// A dense row-major array.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Element type in the file.
    pub dtype: NpyType,
    /// Dimensions (empty for a scalar).
    pub shape: Vec<usize>,
    /// Elements in C (row-major) order.
    pub data: NpyData,
}

const MAGIC: &[u8] = b"\x93NUMPY";
/// Largest header accepted (numpy itself caps headers far below this).
const MAX_HEADER: usize = 1 << 20;

/// Parse the bytes of an `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("not a .npy file (the magic string \\x93NUMPY is missing)");
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                bail!("truncated .npy header");
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => bail!(".npy format version {v} is not supported (1, 2 and 3 are)"),
    };
    if hlen > MAX_HEADER || start + hlen > bytes.len() {
        bail!(
            "the .npy header claims {hlen} bytes but the file has {}",
            bytes.len()
        );
    }
    let header =
        std::str::from_utf8(&bytes[start..start + hlen]).context("the .npy header is not text")?;
    let descr = dict_value(header, "descr").context("the .npy header has no 'descr'")?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order")
        .context("the .npy header has no 'fortran_order'")?
        .trim()
        .starts_with("True");
    let shape_txt = dict_value(header, "shape").context("the .npy header has no 'shape'")?;
    let shape = parse_shape(shape_txt)?;
    let (big, code) = match descr.as_bytes().first() {
        Some(b'<') | Some(b'|') | Some(b'=') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        _ => (false, descr),
    };
    let dtype = match code {
        "f4" => NpyType::F32,
        "f8" => NpyType::F64,
        "i8" => NpyType::I64,
        "i4" => NpyType::I32,
        "u1" => NpyType::U8,
        "b1" => NpyType::Bool,
        other => bail!(
            "array type '{other}' is not supported (float32, float64, int64, int32, uint8 and \
             bool are); convert it with numpy's astype"
        ),
    };
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= mixprec_graph::tensor::MAX_ELEMENTS)
        .with_context(|| format!("shape {shape:?} is too large"))?;
    let body = &bytes[start + hlen..];
    let need = n * dtype.width();
    if body.len() != need {
        bail!(
            "shape {shape:?} of {} needs {need} data bytes, the file has {}",
            dtype.name(),
            body.len()
        );
    }
    let w = dtype.width();
    let word = |c: &[u8]| -> [u8; 8] {
        let mut b = [0u8; 8];
        if big {
            for (i, x) in c.iter().rev().enumerate() {
                b[i] = *x;
            }
        } else {
            b[..c.len()].copy_from_slice(c);
        }
        b
    };
    let chunks = body.chunks_exact(w);
    let data = match dtype {
        NpyType::F32 => NpyData::F32(
            chunks
                .map(|c| {
                    let b = word(c);
                    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
                })
                .collect(),
        ),
        NpyType::F64 => NpyData::F32(chunks.map(|c| f64::from_le_bytes(word(c)) as f32).collect()),
        NpyType::I64 => NpyData::I64(chunks.map(|c| i64::from_le_bytes(word(c))).collect()),
        NpyType::I32 => NpyData::I64(
            chunks
                .map(|c| {
                    let b = word(c);
                    i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64
                })
                .collect(),
        ),
        NpyType::U8 => NpyData::I64(body.iter().map(|&b| b as i64).collect()),
        NpyType::Bool => NpyData::I64(body.iter().map(|&b| (b != 0) as i64).collect()),
    };
    let data = if fortran && shape.len() > 1 {
        to_c_order(&shape, data)
    } else {
        data
    };
    Ok(NpyArray { dtype, shape, data })
}

/// The text after `'key':` in a Python dict literal, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_a = format!("'{key}'");
    let pat_b = format!("\"{key}\"");
    let at = header.find(&pat_a).or_else(|| header.find(&pat_b))?;
    let rest = header[at + pat_a.len()..].trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    Some(rest)
}

fn parse_shape(s: &str) -> Result<Vec<usize>> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .with_context(|| format!("the .npy shape '{s}' is not a tuple"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.trim_end_matches('L')
                .parse::<usize>()
                .with_context(|| format!("bad dimension '{p}' in the .npy shape"))
        })
        .collect()
}

/// Reorder Fortran-order (column-major) elements to C order.
fn to_c_order(shape: &[usize], data: NpyData) -> NpyData {
    let n: usize = shape.iter().product();
    let r = shape.len();
    // Column-major strides.
    let mut fs = vec![1usize; r];
    for i in 1..r {
        fs[i] = fs[i - 1] * shape[i - 1];
    }
    let mut idx = Vec::with_capacity(n);
    let mut pos = vec![0usize; r];
    for _ in 0..n {
        idx.push(pos.iter().zip(&fs).map(|(p, s)| p * s).sum::<usize>());
        for d in (0..r).rev() {
            pos[d] += 1;
            if pos[d] < shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    match data {
        NpyData::F32(v) => NpyData::F32(idx.iter().map(|&i| v[i]).collect()),
        NpyData::I64(v) => NpyData::I64(idx.iter().map(|&i| v[i]).collect()),
    }
}

/// Encode an array as `.npy` (format 1.0, little endian, C order). `dtype` must be F32 (with
/// float data), I64 or Bool (with integer data).
pub fn encode_npy(a: &NpyArray) -> Result<Vec<u8>> {
    let descr = match (a.dtype, &a.data) {
        (NpyType::F32, NpyData::F32(_)) => "<f4",
        (NpyType::I64, NpyData::I64(_)) => "<i8",
        (NpyType::Bool, NpyData::I64(_)) => "|b1",
        (t, _) => bail!("cannot write a {} array with these elements", t.name()),
    };
    let shape = match a.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", a.shape[0]),
        _ => format!(
            "({})",
            a.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts at a multiple of 64 bytes, header ending in a newline.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match &a.data {
        NpyData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::I64(v) if a.dtype == NpyType::Bool => {
            out.extend(v.iter().map(|&x| (x != 0) as u8))
        }
        NpyData::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    Ok(out)
}

/// CRC-32 (IEEE 802.3, as zip uses).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut c = !0u32;
    for &b in bytes {
        c = table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// An uncompressed zip archive of `(member name, bytes)`, as `numpy.savez` writes.
pub fn encode_zip(members: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let too_big = || anyhow::anyhow!("the archive would exceed 4 GiB (zip64 is not written)");
    for (name, data) in members {
        let offset = u32::try_from(out.len()).map_err(|_| too_big())?;
        let size = u32::try_from(data.len()).map_err(|_| too_big())?;
        let name_len = u16::try_from(name.len()).context("member name too long")?;
        let crc = crc32(data);
        // Version 2.0, no flags, stored, DOS time/date 1980-01-01 00:00.
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes());
            v.extend_from_slice(&0x21u16.to_le_bytes());
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&name_len.to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes());
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        common(&mut central);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment length
        central.extend_from_slice(&0u16.to_le_bytes()); // disk number
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = u32::try_from(out.len()).map_err(|_| too_big())?;
    let cd_size = u32::try_from(central.len()).map_err(|_| too_big())?;
    let count = u16::try_from(members.len()).context("too many members")?;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    Ok(out)
}

fn le16(b: &[u8], at: usize) -> Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .context("truncated zip archive")
}

fn le32(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .context("truncated zip archive")
}

fn le64(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
        .context("truncated zip archive")
}

/// The `(member name without ".npy", array)` pairs of an `.npz` archive, in archive order.
pub fn parse_npz(bytes: &[u8]) -> Result<Vec<(String, NpyArray)>> {
    // End of central directory: the last signature within the final 64 KiB + 22 bytes.
    let lo = bytes.len().saturating_sub(22 + 65_535);
    let eocd = (lo..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| le32(bytes, i).ok() == Some(0x0605_4b50))
        .context("not a zip archive (no end-of-central-directory record)")?;
    let count = usize::from(le16(bytes, eocd + 10)?);
    let mut at = le32(bytes, eocd + 16)? as usize;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if le32(bytes, at)? != 0x0201_4b50 {
            bail!("corrupt zip central directory at byte {at}");
        }
        let method = le16(bytes, at + 10)?;
        let mut csize = u64::from(le32(bytes, at + 20)?);
        let mut usize_ = u64::from(le32(bytes, at + 24)?);
        let name_len = usize::from(le16(bytes, at + 28)?);
        let extra_len = usize::from(le16(bytes, at + 30)?);
        let comment_len = usize::from(le16(bytes, at + 32)?);
        let mut offset = u64::from(le32(bytes, at + 42)?);
        let name = bytes
            .get(at + 46..at + 46 + name_len)
            .context("truncated zip archive")?;
        let name = String::from_utf8_lossy(name).into_owned();
        // Zip64 extra field: the 64-bit values of the fields saturated above, in order.
        let mut e = at + 46 + name_len;
        let end = e + extra_len;
        while e + 4 <= end {
            let (id, len) = (le16(bytes, e)?, usize::from(le16(bytes, e + 2)?));
            if id == 1 {
                let mut f = e + 4;
                for v in [&mut usize_, &mut csize, &mut offset] {
                    if *v == 0xFFFF_FFFF && f + 8 <= e + 4 + len {
                        *v = le64(bytes, f)?;
                        f += 8;
                    }
                }
            }
            e += 4 + len;
        }
        at = end + comment_len;
        let local = usize::try_from(offset).context("zip member offset too large")?;
        if le32(bytes, local)? != 0x0403_4b50 {
            bail!("member '{name}': corrupt zip local header");
        }
        let start = local
            + 30
            + usize::from(le16(bytes, local + 26)?)
            + usize::from(le16(bytes, local + 28)?);
        let csize = usize::try_from(csize).context("zip member too large")?;
        let raw = bytes
            .get(start..start + csize)
            .with_context(|| format!("member '{name}': truncated data"))?;
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                use std::io::Read;
                let mut v = Vec::with_capacity(usize::try_from(usize_).unwrap_or(0));
                flate2::read::DeflateDecoder::new(raw)
                    .read_to_end(&mut v)
                    .with_context(|| format!("member '{name}': bad deflate data"))?;
                v
            }
            m => bail!("member '{name}': zip compression method {m} is not supported (stored or deflate are)"),
        };
        let arr = parse_npy(&data).with_context(|| format!("member '{name}'"))?;
        out.push((name.trim_end_matches(".npy").to_string(), arr));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npz_roundtrip_stored_and_deflated() {
        let a = NpyArray {
            dtype: NpyType::F32,
            shape: vec![2, 3],
            data: NpyData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        };
        let b = NpyArray {
            dtype: NpyType::I64,
            shape: vec![2],
            data: NpyData::I64(vec![7, -1]),
        };
        let zip = encode_zip(&[
            ("x.npy".into(), encode_npy(&a).unwrap()),
            ("y.npy".into(), encode_npy(&b).unwrap()),
        ])
        .unwrap();
        let got = parse_npz(&zip).unwrap();
        assert_eq!(
            got,
            vec![("x".to_string(), a.clone()), ("y".to_string(), b)]
        );
        // A deflated member with a zip64 extra field (as numpy.savez_compressed writes): built
        // by hand from the stored archive's layout.
        use std::io::Write;
        let npy = encode_npy(&a).unwrap();
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&npy).unwrap();
        let def = enc.finish().unwrap();
        let name = b"x.npy";
        let mut out = Vec::new();
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[45, 0, 0, 0, 8, 0, 0, 0, 0x21, 0]);
        out.extend_from_slice(&crc32(&npy).to_le_bytes());
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(name);
        let z64 = |v: &mut Vec<u8>| {
            v.extend_from_slice(&1u16.to_le_bytes());
            v.extend_from_slice(&16u16.to_le_bytes());
            v.extend_from_slice(&(npy.len() as u64).to_le_bytes());
            v.extend_from_slice(&(def.len() as u64).to_le_bytes());
        };
        z64(&mut out);
        out.extend_from_slice(&def);
        let cd = out.len();
        out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 8, 0, 0, 0, 0x21, 0]);
        out.extend_from_slice(&crc32(&npy).to_le_bytes());
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(name);
        z64(&mut out);
        let cd_len = out.len() - cd;
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
        out.extend_from_slice(&(cd_len as u32).to_le_bytes());
        out.extend_from_slice(&(cd as u32).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        let got = parse_npz(&out).unwrap();
        assert_eq!(got, vec![("x".to_string(), a)]);
        assert!(parse_npz(b"not a zip").is_err());
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn npy_roundtrip_and_alignment() {
        let a = NpyArray {
            dtype: NpyType::F32,
            shape: vec![2, 3],
            data: NpyData::F32(vec![0.5, -1.0, 2.0, 3.0, 4.0, 5.5]),
        };
        let b = encode_npy(&a).unwrap();
        assert_eq!((b.len() - 6 * 4) % 64, 0);
        assert_eq!(parse_npy(&b).unwrap(), a);
        let m = NpyArray {
            dtype: NpyType::Bool,
            shape: vec![3],
            data: NpyData::I64(vec![1, 0, 1]),
        };
        assert_eq!(parse_npy(&encode_npy(&m).unwrap()).unwrap(), m);
    }

    /// `[[1, 2, 3], [4, 5, 6]]` as big-endian int32 in Fortran order, header in numpy's layout.
    #[test]
    fn fortran_order_big_endian() {
        let header = "{'descr': '>i4', 'fortran_order': True, 'shape': (2, 3), }";
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        for v in [1i32, 4, 2, 5, 3, 6] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        let a = parse_npy(&b).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, NpyData::I64(vec![1, 2, 3, 4, 5, 6]));
    }

    #[test]
    fn lying_shapes_are_errors() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }";
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(&[0; 16]);
        let e = parse_npy(&b).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        assert!(parse_npy(b"\x93NUMPY\x01\x00\xff\xff").is_err());
        assert!(parse_npy(b"PK\x03\x04").is_err());
    }

    #[test]
    fn zip_layout() {
        let z = encode_zip(&[("a.npy".into(), b"hello".to_vec())]).unwrap();
        assert_eq!(&z[..4], b"PK\x03\x04");
        // Local header (30) + name (5) + data (5) + central (46 + 5) + end (22).
        assert_eq!(z.len(), 30 + 5 + 5 + 46 + 5 + 22);
        assert_eq!(&z[z.len() - 22..z.len() - 18], b"PK\x05\x06");
        assert_eq!(
            u32::from_le_bytes([z[14], z[15], z[16], z[17]]),
            crc32(b"hello")
        );
    }
}
