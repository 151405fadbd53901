//! CRC of a DC-09 frame.
//!
//! The four hex digits after the leading `<LF>` are a CRC-16 in the
//! "ARC" flavour (also called CRC-16/IBM or CRC-16/LHA): polynomial 0x8005
//! processed bit-reflected (so the shift register uses 0xA001), initial
//! value 0, no final XOR. Its catalogue check value for the ASCII string
//! `123456789` is 0xBB3D.
//!
//! The CRC covers exactly the bytes counted by the length field: from the
//! opening `"` of the ID token up to and including the last timestamp
//! character (or the last `]` when there is no timestamp). The leading
//! `<LF>`, the CRC and length fields themselves, and the trailing `<CR>`
//! are not included.

/// Reflected form of the 0x8005 polynomial.
const POLY_REFLECTED: u16 = 0xA001;

/// CRC-16/ARC of `data` (poly 0x8005 reflected, init 0, no final XOR).
pub fn crc16_arc(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |mut crc, &byte| {
        crc ^= u16::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
        }
        crc
    })
}

#[cfg(test)]
mod tests {
    use super::crc16_arc;

    #[test]
    fn catalogue_check_value() {
        // CRC-16/ARC "check" value from the CRC catalogue.
        assert_eq!(crc16_arc(b"123456789"), 0xBB3D);
    }

    #[test]
    fn empty_input_is_init_value() {
        assert_eq!(crc16_arc(b""), 0x0000);
    }

    #[test]
    fn single_bytes() {
        // Independently computed with a bitwise Python implementation
        // (see the comment in decode tests for the one-liner).
        assert_eq!(crc16_arc(b"A"), 0x30C0);
        assert_eq!(crc16_arc(&[0xFF]), 0x4040);
    }
}
