//! Big-endian fields in Kafka's classic (non-flexible) encoding, for the records ringmq writes
//! to its internal topics (the group and transaction coordinators' state), and the unsigned
//! varint of the flexible versions for the few messages encoded by hand (the Fetch response,
//! the load generator's Produce request). Reads are bounded: a short or lying input is an
//! error, never a panic.

use bytes::{BufMut, BytesMut};

pub fn put_string(out: &mut BytesMut, text: &str) {
    // Names and ids are bounded far below i16::MAX by the requests that carry them.
    out.put_i16(text.len().min(i16::MAX as usize) as i16);
    out.put_slice(&text.as_bytes()[..text.len().min(i16::MAX as usize)]);
}

pub fn put_nullable_string(out: &mut BytesMut, text: Option<&str>) {
    match text {
        Some(text) => put_string(out, text),
        None => out.put_i16(-1),
    }
}

pub fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_i32(bytes.len() as i32);
    out.put_slice(bytes);
}

/// An unsigned varint: a compact length (plus one) or a tagged field count in flexible versions.
pub fn put_unsigned_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Big-endian reads that fail instead of running past the end.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("needs {n} bytes, {} left", self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn i16(&mut self) -> Result<i16, String> {
        let bytes = self.take(2)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, String> {
        let bytes = self.take(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn i64(&mut self) -> Result<i64, String> {
        let mut out = [0; 8];
        out.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(out))
    }

    pub fn nullable_string(&mut self) -> Result<Option<String>, String> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).map(Some).map_err(|e| e.to_string())
    }

    pub fn string(&mut self) -> Result<String, String> {
        self.nullable_string()?.ok_or_else(|| "a null string where one is required".to_string())
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(&[]);
        }
        self.take(len as usize)
    }
}
