//! The structured error every FFI call can return.
//!
//! It mirrors `ktstr_sdk::StageError` field for field. The kind is a string
//! (`"invalid-input"`, `"internal"`, ...) rather than an enum so that a kind
//! added later is not an ABI break: a host that does not know it treats it
//! as `internal`.

use abi_stable::StableAbi;
use abi_stable::std_types::{ROption, RResult, RString, RVec};

/// A stage failure as it crosses the plugin boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct FfiError {
    /// `ktstr_sdk::ErrorKind` in kebab-case.
    pub kind: RString,
    pub message: RString,
    pub hint: ROption<RString>,
    /// Lower-level causes, outermost first.
    pub causes: RVec<RString>,
}

impl FfiError {
    /// An `internal` error: a plugin bug or a broken payload.
    pub fn internal(message: impl Into<RString>) -> Self {
        Self {
            kind: "internal".into(),
            message: message.into(),
            hint: ROption::RNone,
            causes: RVec::new(),
        }
    }
}

/// Result of every FFI call.
pub type FfiResult<T> = RResult<T, FfiError>;
