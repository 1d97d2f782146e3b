//! Errors and JSON payloads across the boundary, in both directions.

use ktstr_plugin_abi::FfiError;
use ktstr_plugin_abi::abi_stable::std_types::{ROption, RString, RVec};

use crate::error::{ErrorKind, Result, StageError};

/// `StageError` → `FfiError`.
pub fn to_ffi(e: &StageError) -> FfiError {
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "internal".into());
    FfiError {
        kind: kind.into(),
        message: e.message.as_str().into(),
        hint: e.hint.as_deref().map(RString::from).into(),
        causes: e.causes.iter().map(|c| RString::from(c.as_str())).collect(),
    }
}

/// `FfiError` → `StageError`. A kind this SDK does not know (from a newer
/// plugin) becomes `Internal`, keeping the message.
pub fn from_ffi(e: FfiError) -> StageError {
    let kind: ErrorKind = serde_json::from_value(serde_json::Value::String(e.kind.to_string()))
        .unwrap_or(ErrorKind::Internal);
    StageError {
        kind,
        message: e.message.into_string(),
        hint: match e.hint {
            ROption::RSome(h) => Some(h.into_string()),
            ROption::RNone => None,
        },
        causes: RVec::into_vec(e.causes)
            .into_iter()
            .map(RString::into_string)
            .collect(),
    }
}

/// Serialise a payload. Failing here is a bug in the sdk types.
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<RString> {
    serde_json::to_string(value)
        .map(RString::from)
        .map_err(|e| {
            StageError::internal("cannot encode a plugin call's data as JSON").caused_by(e)
        })
}

/// Decode a payload that crossed the boundary; `what` names it.
///
/// A failure means the host and the plugin disagree on the data format,
/// which a rebuild against the host's SDK fixes.
pub fn from_json<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| {
        StageError::internal(format!("cannot decode {what} received across the plugin boundary"))
            .caused_by(e)
            .with_hint(format!(
                "the plugin and ktstr use different data formats; rebuild the plugin against ktstr-sdk {}",
                super::SDK_VERSION
            ))
    })
}

/// Encode one argument of an FFI call (host side).
pub fn json_arg<T: serde::Serialize>(value: &T) -> Result<String> {
    to_json(value).map(RString::into_string)
}
