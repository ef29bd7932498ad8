//! Dense storage of symmetric signed low-bit weights.
//!
//! Survey §3.3 (HAWQ-V3, Yao et al., ICML 2021): mixed 4/8-bit weights are stored packed; HAWQ-V3's
//! TVM back end packs "eight 4-bit elements into an INT32". Complexity: `O(len)` time, `⌈len·b/8⌉`
//! bytes.
//!
//! Layouts:
//! - [`PackedBits`] (any width `b` in 2..=8): an LSB-first bit stream. Element `i` is the `b`-bit
//!   two's-complement field at stream bits `[i·b, i·b + b)`, where stream bit `j` is bit `j % 8` of
//!   byte `j / 8`. This gives four int2 per byte (element `4t + r` in bits `2r..2r+2` of byte `t`),
//!   two int4 per byte (even element in the low nibble), eight int3 in every three bytes (fields
//!   may straddle a byte boundary), one int8 per byte; unused high bits of the last byte are zero.
//! - [`pack_int4_x8_i32`]: HAWQ-V3's layout, element `i` in bits `4·(i % 8)..4·(i % 8) + 4` of word
//!   `i / 8` (little nibble first), the tail padded with zeros.

use super::{check_signed, KernelError, Result};

/// Signed `bits`-bit values packed densely into a byte stream (see the module docs for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedBits {
    bits: u32,
    len: usize,
    data: Vec<u8>,
}

fn check_bits(bits: u32) -> Result<()> {
    if (2..=8).contains(&bits) {
        Ok(())
    } else {
        Err(KernelError::UnsupportedBits {
            what: "packed weights".to_string(),
            bits,
            supported: "2..=8",
        })
    }
}

/// Bytes needed for `len` values of `bits` bits.
pub fn packed_len(len: usize, bits: u32) -> usize {
    (len * bits as usize).div_ceil(8)
}

#[inline]
fn sign_extend(field: u32, bits: u32) -> i8 {
    let sh = 32 - bits;
    ((field << sh) as i32 >> sh) as i8
}

impl PackedBits {
    /// Wraps an existing byte stream; fails when `data` is not exactly `⌈len·bits/8⌉` bytes.
    pub fn from_raw(bits: u32, len: usize, data: Vec<u8>) -> Result<Self> {
        check_bits(bits)?;
        super::check_len("packed byte stream", packed_len(len, bits), data.len())?;
        Ok(Self { bits, len, data })
    }

    /// Bit width of each element.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The packed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// Element `i` (sign-extended), or `None` past the end.
    pub fn get(&self, i: usize) -> Option<i8> {
        if i >= self.len {
            return None;
        }
        let pos = i * self.bits as usize;
        let byte = pos / 8;
        let off = (pos % 8) as u32;
        let lo = self.data[byte] as u32;
        let hi = self.data.get(byte + 1).copied().unwrap_or(0) as u32;
        let field = ((lo | (hi << 8)) >> off) & ((1u32 << self.bits) - 1);
        Some(sign_extend(field, self.bits))
    }
}

/// Packs signed values of `bits` bits (2..=8) densely; every value must lie in
/// `[-2^(bits-1), 2^(bits-1) - 1]`.
pub fn pack_bits(values: &[i8], bits: u32) -> Result<PackedBits> {
    check_bits(bits)?;
    check_signed("weights to pack", values, bits)?;
    let mut data = vec![0u8; packed_len(values.len(), bits)];
    let mask = (1u32 << bits) - 1;
    for (i, &v) in values.iter().enumerate() {
        let pos = i * bits as usize;
        let byte = pos / 8;
        let off = (pos % 8) as u32;
        let word = ((v as u8 as u32) & mask) << off;
        data[byte] |= word as u8;
        if off + bits > 8 {
            data[byte + 1] |= (word >> 8) as u8;
        }
    }
    Ok(PackedBits {
        bits,
        len: values.len(),
        data,
    })
}

/// Unpacks every element of `p` (sign-extended to `i8`).
pub fn unpack_bits(p: &PackedBits) -> Vec<i8> {
    (0..p.len).map(|i| p.get(i).unwrap_or(0)).collect()
}

/// Packs signed 4-bit values eight per `i32` (HAWQ-V3 layout, see the module docs).
pub fn pack_int4_x8_i32(values: &[i8]) -> Result<Vec<i32>> {
    check_signed("int4 values to pack", values, 4)?;
    Ok(values
        .chunks(8)
        .map(|c| {
            c.iter().enumerate().fold(0u32, |w, (j, &v)| {
                w | (((v as u8 as u32) & 0xF) << (4 * j as u32))
            }) as i32
        })
        .collect())
}

/// Unpacks `len` signed 4-bit values from the HAWQ-V3 "eight per `i32`" layout.
pub fn unpack_int4_x8_i32(words: &[i32], len: usize) -> Result<Vec<i8>> {
    super::check_len("int4x8 words", len.div_ceil(8), words.len())?;
    Ok((0..len)
        .map(|i| sign_extend((words[i / 8] as u32 >> (4 * (i % 8) as u32)) & 0xF, 4))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_two_per_byte_low_nibble_first() {
        let p = pack_bits(&[1, -1, -8, 7], 4).unwrap();
        assert_eq!(p.as_bytes(), &[0xF1, 0x78]);
        assert_eq!(unpack_bits(&p), vec![1, -1, -8, 7]);
    }

    #[test]
    fn int2_four_per_byte() {
        let p = pack_bits(&[0, 1, -2, -1, 1], 2).unwrap();
        // 0b11_10_01_00, then 0b01
        assert_eq!(p.as_bytes(), &[0b1110_0100, 0b01]);
        assert_eq!(unpack_bits(&p), vec![0, 1, -2, -1, 1]);
    }

    #[test]
    fn int3_eight_per_three_bytes() {
        let v = [-4, -3, -2, -1, 0, 1, 2, 3];
        let p = pack_bits(&v, 3).unwrap();
        assert_eq!(p.as_bytes().len(), 3);
        // fields 100 101 110 111 000 001 010 011, LSB first
        let stream: u32 = v
            .iter()
            .enumerate()
            .map(|(i, &x)| ((x as u8 as u32) & 7) << (3 * i))
            .sum();
        assert_eq!(p.as_bytes(), &stream.to_le_bytes()[..3]);
        assert_eq!(unpack_bits(&p), v.to_vec());
    }

    #[test]
    fn out_of_range_is_rejected() {
        let e = pack_bits(&[0, 8], 4).unwrap_err();
        assert!(matches!(
            e,
            KernelError::ValueOutOfRange {
                index: 1,
                value: 8,
                ..
            }
        ));
        assert!(pack_bits(&[0], 9).is_err());
        assert!(pack_bits(&[0], 1).is_err());
        assert!(PackedBits::from_raw(4, 3, vec![0]).is_err());
    }

    #[test]
    fn hawq_int4_x8_word() {
        let w = pack_int4_x8_i32(&[1, 2, 3, 4, 5, 6, 7, -8, -1]).unwrap();
        assert_eq!(w, vec![0x8765_4321u32 as i32, 0xF]);
        assert_eq!(
            unpack_int4_x8_i32(&w, 9).unwrap(),
            vec![1, 2, 3, 4, 5, 6, 7, -8, -1]
        );
        assert!(unpack_int4_x8_i32(&w, 17).is_err());
    }
}
