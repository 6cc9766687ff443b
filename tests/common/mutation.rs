//! Damage for valid files, and a harness that runs a loader on the damaged bytes: the strategies of the
//! "loaders never panic" properties. A file kind is added by producing one valid file and calling
//! [`run_loader`] on [`Mutation::apply`] or [`JsonEdit::apply`] of it; nothing here knows a format
//! except the safetensors framing (8-byte length, JSON header, data) that [`SafetensorsFile`] splits.
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// One way of damaging a file's bytes.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Keeps a strict prefix (possibly empty).
    Truncate(Index),
    /// Flips one bit in each of the chosen bytes.
    FlipBits(Vec<(Index, u8)>),
    /// Overwrites the chosen bytes with the given values.
    OverwriteBytes(Vec<(Index, u8)>),
    /// Replaces `removed` bytes at a position with `inserted` (the length may change).
    Splice { at: Index, removed: usize, inserted: Vec<u8> },
    /// Replaces the whole file.
    Random(Vec<u8>),
}

impl Mutation {
    /// The damaged copy of `original`.
    pub fn apply(&self, original: &[u8]) -> Vec<u8> {
        let mut bytes = original.to_vec();
        let len = original.len().max(1);
        match self {
            Mutation::Truncate(at) => bytes.truncate(at.index(len)),
            Mutation::FlipBits(flips) if !bytes.is_empty() => {
                for (at, bit) in flips {
                    bytes[at.index(len)] ^= 1 << (bit % 8);
                }
            }
            Mutation::OverwriteBytes(writes) if !bytes.is_empty() => {
                for (at, value) in writes {
                    bytes[at.index(len)] = *value;
                }
            }
            Mutation::Splice { at, removed, inserted } => {
                let start = at.index(len + 1).min(bytes.len());
                let end = (start + removed).min(bytes.len());
                bytes.splice(start..end, inserted.iter().copied());
            }
            Mutation::Random(random) => bytes = random.clone(),
            Mutation::FlipBits(_) | Mutation::OverwriteBytes(_) => {}
        }
        bytes
    }
}

/// Truncations, bit flips, overwritten bytes, splices of random bytes and whole random files.
pub fn byte_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        prop::collection::vec((any::<Index>(), any::<u8>()), 1..4).prop_map(Mutation::FlipBits),
        prop::collection::vec((any::<Index>(), any::<u8>()), 1..8).prop_map(Mutation::OverwriteBytes),
        (any::<Index>(), 0usize..16, prop::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(at, removed, inserted)| Mutation::Splice { at, removed, inserted }),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(Mutation::Random),
    ]
}

/// A value chosen to break a reader that trusts a JSON field: extremes of every number type, wrong types,
/// and containers where scalars belong.
pub fn hostile_json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::from(u64::MAX)),
        Just(Value::from(1u64 << 53)),
        Just(Value::from(1u64 << 32)),
        Just(Value::from(1u64 << 60)),
        Just(Value::from(i64::MIN)),
        Just(Value::from(-1)),
        Just(Value::from(0)),
        Just(Value::from(1e300)),
        Just(Value::from(-0.5)),
        Just(Value::Null),
        Just(Value::from(true)),
        Just(Value::from("")),
        Just(Value::from("F8_E4M3")),
        Just(Value::from("I64")),
        Just(Value::from("../../state.json")),
        Just(Value::Array(vec![])),
        Just(Value::from(vec![u64::MAX, u64::MAX])),
        Just(Value::from(vec![1u64 << 32, 1u64 << 32])),
        Just(serde_json::json!({})),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z0-9_.]{0,12}".prop_map(Value::from),
    ]
}

/// Replaces one value anywhere below the root of a JSON document (an object field or an array element,
/// scalar or container) with a hostile value.
#[derive(Clone, Debug)]
pub struct JsonEdit {
    pub target: Index,
    pub value: Value,
}

pub fn json_edit() -> impl Strategy<Value = JsonEdit> {
    (any::<Index>(), hostile_json_value()).prop_map(|(target, value)| JsonEdit { target, value })
}

impl JsonEdit {
    /// The edited copy of `document` (unchanged when it has no value below the root).
    pub fn apply(&self, document: &Value) -> Value {
        let mut edited = document.clone();
        let mut pointers = Vec::new();
        collect_pointers(document, String::new(), &mut pointers);
        if pointers.is_empty() {
            return edited;
        }
        if let Some(slot) = edited.pointer_mut(&pointers[self.target.index(pointers.len())]) {
            *slot = self.value.clone();
        }
        edited
    }
}

/// The JSON pointers of every value below `value`, in document order.
fn collect_pointers(value: &Value, prefix: String, out: &mut Vec<String>) {
    let escape = |key: &str| key.replace('~', "~0").replace('/', "~1");
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let pointer = format!("{prefix}/{}", escape(key));
                out.push(pointer.clone());
                collect_pointers(child, pointer, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let pointer = format!("{prefix}/{i}");
                out.push(pointer.clone());
                collect_pointers(child, pointer, out);
            }
        }
        _ => {}
    }
}

/// A safetensors file split into its JSON header and its data, and joined back with a fresh length.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetensorsFile {
    pub header: Value,
    pub data: Vec<u8>,
}

impl SafetensorsFile {
    /// `None` unless `bytes` is an 8-byte length, a JSON header of that length and the rest.
    pub fn split(bytes: &[u8]) -> Option<SafetensorsFile> {
        let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let end = usize::try_from(len).ok()?.checked_add(8)?;
        let header = serde_json::from_slice(bytes.get(8..end)?).ok()?;
        Some(SafetensorsFile { header, data: bytes[end..].to_vec() })
    }

    pub fn join(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).expect("a JSON value serialises");
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&self.data);
        bytes
    }

    /// The byte range of the data in the file this was split from.
    pub fn data_range(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
        let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
        Some(len.checked_add(8)?..bytes.len())
    }
}

/// Where inputs that crash a loader are kept for reproduction.
pub fn failure_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("loader-failures")
}

/// Writes `bytes` to `file` and runs `load` on it. A panic fails the case with the input saved under
/// [`failure_dir`]; an abort (which no test can catch: a failed allocation, a stack overflow) leaves the
/// input in `<failure_dir>/<case>.pending`. Returns the loader's result as `Ok(())` or the error's message.
pub fn run_loader<T, E: std::fmt::Display>(
    case: &str,
    file: &Path,
    bytes: &[u8],
    load: impl FnOnce() -> Result<T, E>,
) -> Result<Result<T, String>, TestCaseError> {
    let dir = failure_dir();
    std::fs::create_dir_all(&dir).map_err(|e| TestCaseError::fail(format!("{}: {e}", dir.display())))?;
    let pending = dir.join(format!("{case}.pending"));
    std::fs::write(&pending, bytes)
        .map_err(|e| TestCaseError::fail(format!("{}: {e}", pending.display())))?;
    std::fs::write(file, bytes).map_err(|e| TestCaseError::fail(format!("{}: {e}", file.display())))?;
    match catch_unwind(AssertUnwindSafe(load)) {
        Ok(result) => {
            let _ = std::fs::remove_file(&pending);
            Ok(result.map_err(|e| e.to_string()))
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let kept = dir.join(format!("{case}-panic-{:016x}.bin", fnv(bytes)));
            let _ = std::fs::rename(&pending, &kept);
            Err(TestCaseError::fail(format!(
                "{case}: the loader panicked ({message}) on the input saved as {}",
                kept.display()
            )))
        }
    }
}

/// FNV-1a, to name saved inputs by their content.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}
