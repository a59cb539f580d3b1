//! Reading the integer fields the original declares and never reads (`replicas`,
//! `availableReplicas`, `weight`). Their schema says `integer` (some `int32`), but the API
//! server does not check the range, so it stores values our types cannot hold; such a value
//! is read as absent rather than making the whole object unreadable.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// An integer that fits `T`, else absent (out of range, a fraction, any other type, null).
pub(crate) fn int_or_absent<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(value.and_then(|v| match v {
        Value::Number(n) => {
            n.as_i64().and_then(|i| T::try_from(i).ok()).or_else(|| n.as_u64().and_then(|u| T::try_from(u).ok()))
        }
        Value::Null | Value::Bool(_) | Value::String(_) | Value::Array(_) | Value::Object(_) => None,
    }))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(default, deserialize_with = "super::int_or_absent")]
        small: Option<i32>,
        #[serde(default, deserialize_with = "super::int_or_absent")]
        large: Option<i64>,
    }

    fn read(v: serde_json::Value) -> Holder {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn values_out_of_range_read_as_absent() {
        assert_eq!(read(json!({"small": 2, "large": -3})), Holder { small: Some(2), large: Some(-3) });
        assert_eq!(read(json!({"small": 2_147_483_648u64, "large": u64::MAX})), Holder { small: None, large: None });
        assert_eq!(read(json!({"small": -2_147_483_649i64, "large": 1e21})), Holder { small: None, large: None });
        assert_eq!(read(json!({"small": null, "large": "7"})), Holder { small: None, large: None });
        assert_eq!(read(json!({})), Holder { small: None, large: None });
    }
}
