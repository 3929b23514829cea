//! GGML tensor type ids as a GGUF file stores them: names (for messages), block sizes, and which ones this crate
//! keeps and decodes.

use crate::matrix::Packed;

/// A GGML tensor type id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GgmlType(pub u32);

/// `(id, name, values per block, bytes per block)` of the types whose layout this crate knows.
const SIZED: [(u32, &str, usize, usize); 15] = [
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (30, "BF16", 1, 2),
];

/// Names of the other ids GGML has used (for messages).
const OTHER: [(u32, &str); 17] = [
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// The weight types this crate reads, in the order they are listed to users.
pub(crate) const SUPPORTED: [&str; 13] = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16",
    "F32",
];

impl GgmlType {
    fn sized(self) -> Option<(&'static str, usize, usize)> {
        SIZED
            .iter()
            .find(|(id, ..)| *id == self.0)
            .map(|&(_, n, bl, bb)| (n, bl, bb))
    }

    /// The type's name (`Q4_K`, `IQ2_XS`, or `type id N` for an unknown id).
    pub(crate) fn name(self) -> String {
        if let Some((n, ..)) = self.sized() {
            return n.to_string();
        }
        match OTHER.iter().find(|(id, _)| *id == self.0) {
            Some((_, n)) => (*n).to_string(),
            None => format!("type id {}", self.0),
        }
    }

    /// Bytes of a tensor of this type with dimensions `dims` (outermost first), when the layout is known; an
    /// error when the rows are not whole blocks or the size overflows.
    pub(crate) fn data_bytes(self, dims: &[usize]) -> std::result::Result<Option<u64>, String> {
        let Some((name, bl, bb)) = self.sized() else {
            return Ok(None);
        };
        let cols = dims.last().copied().unwrap_or(1);
        if cols % bl != 0 {
            return Err(format!(
                "{name} rows of {cols} values are not whole blocks of {bl}"
            ));
        }
        let bytes = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .and_then(|elems| (elems / bl as u64).checked_mul(bb as u64))
            .ok_or_else(|| format!("dimensions {dims:?} of {name} overflow"))?;
        Ok(Some(bytes))
    }

    /// Whether the values are f32 as stored.
    pub(crate) fn is_f32(self) -> bool {
        self.0 == 0
    }

    /// How this crate keeps a tensor of this type packed, if it can decode it at all (`F32` is kept as f32).
    pub(crate) fn packed(self) -> Option<Packed> {
        Packed::from_ggml_id(self.0)
    }
}
