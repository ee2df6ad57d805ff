//! JSON helpers: JSON-pointer reads and writes that create missing parents.

use serde_json::{Map, Value};

/// Pointer-based edits on a JSON value (RFC 6901 pointers such as `/order/id`).
pub trait JsonExt {
    /// Sets the value at `pointer`, creating missing objects along the way.
    /// Returns false if a parent on the way is not an object or array.
    fn set_pointer(&mut self, pointer: &str, value: Value) -> bool;
    /// Removes and returns the value at `pointer`.
    fn take_pointer(&mut self, pointer: &str) -> Option<Value>;
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

impl JsonExt for Value {
    fn set_pointer(&mut self, pointer: &str, value: Value) -> bool {
        if pointer.is_empty() {
            *self = value;
            return true;
        }
        let Some(rest) = pointer.strip_prefix('/') else {
            return false;
        };
        let tokens: Vec<String> = rest.split('/').map(unescape).collect();
        let mut cur = self;
        for (i, token) in tokens.iter().enumerate() {
            let last = i + 1 == tokens.len();
            if cur.is_null() {
                *cur = Value::Object(Map::new());
            }
            match cur {
                Value::Object(map) => {
                    if last {
                        map.insert(token.clone(), value);
                        return true;
                    }
                    cur = map.entry(token.clone()).or_insert(Value::Null);
                }
                Value::Array(items) => {
                    let Ok(index) = token.parse::<usize>() else {
                        return false;
                    };
                    let Some(slot) = items.get_mut(index) else {
                        return false;
                    };
                    if last {
                        *slot = value;
                        return true;
                    }
                    cur = slot;
                }
                _ => return false,
            }
        }
        false
    }

    fn take_pointer(&mut self, pointer: &str) -> Option<Value> {
        let (parent, last) = pointer.rsplit_once('/')?;
        let last = unescape(last);
        match self.pointer_mut(parent)? {
            Value::Object(map) => map.remove(&last),
            Value::Array(items) => {
                let index = last.parse::<usize>().ok()?;
                (index < items.len()).then(|| items.remove(index))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_creates_parents_and_take_removes() {
        let mut v = json!({"a": 1});
        assert!(v.set_pointer("/b/c", json!(2)));
        assert_eq!(v, json!({"a": 1, "b": {"c": 2}}));
        assert_eq!(v.take_pointer("/a"), Some(json!(1)));
        assert_eq!(v, json!({"b": {"c": 2}}));
        assert!(!v.set_pointer("/b/c/d", json!(3)));
    }
}
