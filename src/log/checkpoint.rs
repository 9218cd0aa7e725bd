//! Small files beside the segments, each a fixed little-endian layout sealed with a CRC32:
//! - `clean-shutdown`: written last by a clean close; lets the next open trust the active
//!   segment without scanning it. Removed on open, so a crash after it forces a scan.
//! - `log-start-offset`: written when DeleteRecords moves the log start inside a segment.

use crate::types::Offset;

pub const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
pub const LOG_START_FILE: &str = "log-start-offset";

const MAGIC: u32 = 0x524d_5143; // "RMQC"
const VERSION: u16 = 1;

/// What a clean close knew about the active segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanShutdown {
    pub active_base: Offset,
    pub active_size_bytes: u64,
    pub log_end: Offset,
}

fn seal(fields: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + fields.len() * 8 + 4);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    for field in fields {
        out.extend_from_slice(&field.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn unseal<const N: usize>(data: &[u8]) -> Option<[u64; N]> {
    if data.len() != 6 + N * 8 + 4 {
        return None;
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().ok()?);
    let magic = u32::from_le_bytes(body[..4].try_into().ok()?);
    let version = u16::from_le_bytes(body[4..6].try_into().ok()?);
    if crc != crc32fast::hash(body) || magic != MAGIC || version != VERSION {
        return None;
    }
    let mut fields = [0u64; N];
    for (field, bytes) in fields.iter_mut().zip(body[6..].chunks_exact(8)) {
        *field = u64::from_le_bytes(bytes.try_into().ok()?);
    }
    Some(fields)
}

impl CleanShutdown {
    pub fn encode(&self) -> Vec<u8> {
        seal(&[self.active_base.0 as u64, self.active_size_bytes, self.log_end.0 as u64])
    }

    pub fn decode(data: &[u8]) -> Option<CleanShutdown> {
        let [base, size, end] = unseal::<3>(data)?;
        Some(CleanShutdown {
            active_base: Offset(i64::try_from(base).ok()?),
            active_size_bytes: size,
            log_end: Offset(i64::try_from(end).ok()?),
        })
    }
}

pub fn encode_log_start(offset: Offset) -> Vec<u8> {
    encode_counter(offset.0)
}

pub fn decode_log_start(data: &[u8]) -> Option<Offset> {
    decode_counter(data).map(Offset)
}

/// One non-negative number, sealed: the layout of `log-start-offset`, also used for the
/// broker's `producer-ids` reservation.
pub fn encode_counter(value: i64) -> Vec<u8> {
    seal(&[value as u64])
}

pub fn decode_counter(data: &[u8]) -> Option<i64> {
    let [value] = unseal::<1>(data)?;
    i64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let clean = CleanShutdown { active_base: Offset(10), active_size_bytes: 4097, log_end: Offset(99) };
        let mut data = clean.encode();
        assert_eq!(CleanShutdown::decode(&data), Some(clean));
        data[8] ^= 1;
        assert_eq!(CleanShutdown::decode(&data), None);
        assert_eq!(decode_log_start(&encode_log_start(Offset(7))), Some(Offset(7)));
        assert_eq!(decode_log_start(&[]), None);
    }
}
