//! Structured values out of the fuzzer's bytes. Reading past the end gives zeros and
//! empty slices, so every byte string is a valid input.

#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// A little-endian u64 of up to 8 bytes.
    pub fn u64(&mut self) -> u64 {
        let b = self.bytes(8);
        let mut buf = [0u8; 8];
        buf[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(buf)
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed (one byte) slice.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = self.byte() as usize;
        self.bytes(n)
    }

    /// A length-prefixed (one byte) string, invalid UTF-8 replaced.
    pub fn string(&mut self) -> String {
        String::from_utf8_lossy(self.chunk()).into_owned()
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_as_zeros() {
        let mut i = Input::new(&[1, 2, 0xff]);
        assert_eq!(i.byte(), 1);
        assert_eq!(i.u64(), 0xff02);
        assert_eq!(i.byte(), 0);
        assert!(i.chunk().is_empty());
        assert!(i.is_empty());
    }
}
