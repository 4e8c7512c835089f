//! Reading fields out of provider JSON: a missing or mistyped field reads as empty, since a
//! provider adding or dropping a field must not break the policy reading the rest.

use serde_json::Value;

/// The string at JSON pointer `ptr` in `v`, or `""` when absent or not a string.
pub(crate) fn str_at(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
