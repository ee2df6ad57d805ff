//! `json-map`: a transform that reshapes JSON event data by a declarative
//! mapping, for the "my systems disagree on the data format" problem.
//!
//! Config:
//! * `mapping`: an array of operations applied in order, each a table with `op`:
//!   - `rename` `from` → `to` (moves the value),
//!   - `copy` `from` → `to`,
//!   - `drop` `path`,
//!   - `set` `path` = `value` (any JSON value),
//!   - `count` the array at `from` into `to`,
//!   - `sum` the numbers at `field` (a pointer inside each element, or the
//!     element itself if absent) of the array at `from` into `to`; with
//!     `times` (another pointer inside each element) it sums `field × times`,
//!     e.g. unit price × quantity,
//!   - `multiply` the number at `from` by `by` (a number) or by the number at
//!     `by_path`, into `to` (default: in place).
//!
//!   A missing `from` skips the operation, unless the operation has
//!   `required = true`: then the event is rejected permanently.
//! * `type`: optional new event type for the output event.
//!
//! Paths are JSON pointers (`/customer/email`).
//!
//! The mapping is read once per instance into [`Operation`]s (pointers split
//! into their tokens, fields looked up once), not at every event. An
//! operation that is not well formed fails every event with the same
//! permanent error, naming the operation.
//!
//! Numbers: `count`, `sum` and `multiply` are exact while every operand is an
//! integer (up to 128 bits) and give an integer; with a fraction they compute
//! in floating point and round results below a million to nine decimals (so
//! 0.1 + 0.2 is 0.3). Numbers in strings (`"19.90"`) count. A result JSON
//! cannot hold (a sum past the largest float, `"NaN"`, `"inf"`) fails the
//! event permanently instead of writing `null`.

use serde_json::Value;
use std::sync::OnceLock;
use weft_sdk::{config, Document, Event, JsonExt, Transform, TransformError};

/// The mapping transform.
pub struct JsonMap;

fn permanent(msg: impl Into<String>) -> TransformError {
    TransformError::Permanent(msg.into())
}

fn field<'a>(op: &'a Value, name: &str) -> Result<&'a str, TransformError> {
    op.get(name).and_then(Value::as_str).ok_or_else(|| {
        permanent(format!(
            "mapping operation {op} lacks the string field `{name}`"
        ))
    })
}

/// A number read from the data: exact while every operand is an integer,
/// a float otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn float(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(x) => x,
        }
    }

    /// `self + other`, exact for integers (a float past i128).
    fn add(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a
                .checked_add(b)
                .map_or(Num::Float(a as f64 + b as f64), Num::Int),
            _ => Num::Float(self.float() + other.float()),
        }
    }

    /// `self × other`, exact for integers (a float past i128).
    fn mul(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a
                .checked_mul(b)
                .map_or(Num::Float(a as f64 * b as f64), Num::Int),
            _ => Num::Float(self.float() * other.float()),
        }
    }

    /// The JSON number, or an error when the result is not a finite number
    /// (JSON has none): never a silent `null`.
    fn to_value(self, what: &str) -> Result<Value, TransformError> {
        match self {
            Num::Int(i) => {
                if let Ok(i) = i64::try_from(i) {
                    Ok(Value::from(i))
                } else if let Ok(u) = u64::try_from(i) {
                    Ok(Value::from(u))
                } else {
                    Num::Float(i as f64).to_value(what)
                }
            }
            Num::Float(x) if !x.is_finite() => Err(permanent(format!(
                "{what}: the result is not a finite number"
            ))),
            Num::Float(x) => {
                // Whole numbers that a float holds exactly stay integers;
                // small fractions are rounded to nine places, so that sums
                // of prices read well (0.1 + 0.2 gives 0.3).
                let value = if x.fract() == 0.0 && x.abs() < 9.0e15 {
                    Value::from(x as i64)
                } else if x.abs() < 1.0e6 {
                    serde_json::Number::from_f64((x * 1e9).round() / 1e9)
                        .map(Value::Number)
                        .unwrap_or(Value::Null)
                } else {
                    serde_json::Number::from_f64(x)
                        .map(Value::Number)
                        .unwrap_or(Value::Null)
                };
                Ok(value)
            }
        }
    }
}

/// The number in `v`: a JSON number, or a string holding one. Not a number
/// (also "NaN" and "inf", which JSON cannot hold): `None`.
fn number(v: &Value) -> Option<Num> {
    let num = match v {
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Num::Int(i.into()),
            (None, Some(u)) => Num::Int(u.into()),
            _ => Num::Float(n.as_f64()?),
        },
        Value::String(s) => {
            let s = s.trim();
            match s.parse::<i128>() {
                Ok(i) => Num::Int(i),
                Err(_) => Num::Float(s.parse::<f64>().ok()?),
            }
        }
        _ => return None,
    };
    match num {
        Num::Float(x) if !x.is_finite() => None,
        num => Some(num),
    }
}

/// A JSON pointer (RFC 6901), split into its reference tokens once, when
/// the mapping is read: the same pointer is looked up in every event.
#[derive(Debug)]
struct Pointer {
    text: String,
    /// `None`: not a pointer (no leading `/`), which finds nothing.
    tokens: Option<Vec<String>>,
}

impl Pointer {
    fn new(text: &str) -> Pointer {
        let tokens = if text.is_empty() {
            Some(Vec::new())
        } else {
            text.strip_prefix('/').map(|rest| {
                rest.split('/')
                    .map(|t| t.replace("~1", "/").replace("~0", "~"))
                    .collect()
            })
        };
        Pointer {
            text: text.to_string(),
            tokens,
        }
    }

    /// The value it points at in `v` (as `serde_json::Value::pointer`).
    fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        self.tokens
            .as_ref()?
            .iter()
            .try_fold(v, |v, token| match v {
                Value::Object(map) => map.get(token),
                Value::Array(items) => index(token).and_then(|i| items.get(i)),
                _ => None,
            })
    }
}

/// An array index token: digits, no leading zero (as serde_json reads it).
fn index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// What one mapping operation does, read from config once.
#[derive(Debug)]
enum Kind {
    Rename {
        from: String,
        to: String,
    },
    Copy {
        from: Pointer,
        to: String,
    },
    Drop {
        path: String,
    },
    Set {
        path: String,
        value: Value,
    },
    Count {
        from: Pointer,
        to: String,
    },
    Sum {
        from: Pointer,
        to: String,
        field: Pointer,
        times: Option<Pointer>,
    },
    Multiply {
        from: Pointer,
        to: String,
        by: Option<Value>,
        by_path: Option<Pointer>,
    },
}

/// One mapping operation, read from config once (see the module docs).
#[derive(Debug)]
pub struct Operation {
    kind: Kind,
    required: bool,
}

impl Operation {
    /// Reads one operation of the mapping: its fields must be the ones its
    /// `op` takes, and every path a JSON pointer.
    pub fn parse(op: &Value) -> Result<Operation, TransformError> {
        let text = |name: &str| field(op, name).map(str::to_string);
        let name = field(op, "op")?;
        let allowed: &[&str] = match name {
            "rename" | "copy" | "count" => &["from", "to"],
            "drop" => &["path"],
            "set" => &["path", "value"],
            "sum" => &["from", "to", "field", "times"],
            "multiply" => &["from", "to", "by", "by_path"],
            _ => &[],
        };
        if let Some(fields) = op.as_object() {
            for (key, value) in fields {
                let known = key == "op" || key == "required" || allowed.contains(&key.as_str());
                if !allowed.is_empty() && !known {
                    return Err(permanent(format!(
                        "`{name}` takes no field `{key}` (it takes: {})",
                        allowed.join(", ")
                    )));
                }
                let is_path =
                    ["from", "to", "path", "field", "times", "by_path"].contains(&key.as_str());
                if let (true, Some(p)) = (is_path, value.as_str()) {
                    if !p.is_empty() && !p.starts_with('/') {
                        return Err(permanent(format!(
                            "`{key}` = \"{p}\" is not a JSON pointer (they start with \"/\", e.g. \"/{p}\")"
                        )));
                    }
                }
            }
        }
        if name == "set" && op.get("value").is_none() {
            return Err(permanent("`set` needs a `value`".to_string()));
        }
        if name == "multiply" && (op.get("by").is_some() == op.get("by_path").is_some()) {
            return Err(permanent(
                "`multiply` needs one of `by` (a number) or `by_path` (a pointer)".to_string(),
            ));
        }
        let kind = match name {
            "rename" => Kind::Rename {
                from: text("from")?,
                to: text("to")?,
            },
            "copy" => Kind::Copy {
                from: Pointer::new(field(op, "from")?),
                to: text("to")?,
            },
            "drop" => Kind::Drop {
                path: text("path")?,
            },
            "set" => Kind::Set {
                path: text("path")?,
                value: op.get("value").cloned().unwrap_or(Value::Null),
            },
            "count" => Kind::Count {
                from: Pointer::new(field(op, "from")?),
                to: text("to")?,
            },
            "sum" => Kind::Sum {
                from: Pointer::new(field(op, "from")?),
                to: text("to")?,
                field: Pointer::new(op.get("field").and_then(Value::as_str).unwrap_or("")),
                times: op.get("times").and_then(Value::as_str).map(Pointer::new),
            },
            "multiply" => {
                let from = field(op, "from")?;
                Kind::Multiply {
                    from: Pointer::new(from),
                    to: op
                        .get("to")
                        .and_then(Value::as_str)
                        .unwrap_or(from)
                        .to_string(),
                    by: op.get("by").cloned(),
                    by_path: op.get("by_path").and_then(Value::as_str).map(Pointer::new),
                }
            }
            other => return Err(permanent(format!("unknown mapping operation `{other}`"))),
        };
        Ok(Operation {
            kind,
            required: op.get("required").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// The pointers it names (for [`Document::edit`]).
    fn pointers(&self) -> Vec<&str> {
        match &self.kind {
            Kind::Rename { from, to } => vec![from, to],
            Kind::Copy { from, to } | Kind::Count { from, to } | Kind::Sum { from, to, .. } => {
                vec![&from.text, to]
            }
            Kind::Drop { path } | Kind::Set { path, .. } => vec![path],
            Kind::Multiply {
                from, to, by_path, ..
            } => {
                let mut p = vec![from.text.as_str(), to.as_str()];
                p.extend(by_path.as_ref().map(|b| b.text.as_str()));
                p
            }
        }
    }
}

/// Applies one mapping operation to `doc`.
pub fn apply(doc: &mut Value, op: &Operation) -> Result<(), TransformError> {
    let missing = |from: &str| -> Result<(), TransformError> {
        if op.required {
            Err(permanent(format!("required field {from} is missing")))
        } else {
            Ok(())
        }
    };
    let set = |doc: &mut Value, to: &str, v: Value| -> Result<(), TransformError> {
        if doc.set_pointer(to, v) {
            Ok(())
        } else {
            Err(permanent(format!(
                "cannot write {to}: a parent is neither an object nor an array, or an index is past the end (\"-\" appends)"
            )))
        }
    };
    match &op.kind {
        Kind::Rename { from, to } => match doc.take_pointer(from) {
            Some(v) => set(doc, to, v),
            None => missing(from),
        },
        Kind::Copy { from, to } => match from.get(doc).cloned() {
            Some(v) => set(doc, to, v),
            None => missing(&from.text),
        },
        Kind::Drop { path } => {
            doc.take_pointer(path);
            Ok(())
        }
        Kind::Set { path, value } => set(doc, path, value.clone()),
        Kind::Count { from, to } => match from.get(doc) {
            Some(Value::Array(items)) => {
                let n = items.len();
                set(doc, to, Value::from(n))
            }
            Some(other) => Err(permanent(format!(
                "count: {} is not an array but {other}",
                from.text
            ))),
            None => missing(&from.text),
        },
        Kind::Sum {
            from,
            to,
            field: inner,
            times,
        } => {
            let total = match from.get(doc) {
                Some(Value::Array(items)) => {
                    let mut total = Num::Int(0);
                    for item in items {
                        let v = inner.get(item).and_then(number).ok_or_else(|| {
                            permanent(format!(
                                "sum: element {item} of {} has no number at '{}'",
                                from.text, inner.text
                            ))
                        })?;
                        let factor = match times {
                            Some(t) => t.get(item).and_then(number).ok_or_else(|| {
                                permanent(format!(
                                    "sum: element {item} of {} has no number at '{}'",
                                    from.text, t.text
                                ))
                            })?,
                            None => Num::Int(1),
                        };
                        total = total.add(v.mul(factor));
                    }
                    total
                }
                Some(other) => {
                    return Err(permanent(format!(
                        "sum: {} is not an array but {other}",
                        from.text
                    )))
                }
                None => return missing(&from.text),
            };
            set(doc, to, total.to_value("sum")?)
        }
        Kind::Multiply {
            from,
            to,
            by,
            by_path,
        } => {
            let Some(value) = from.get(doc) else {
                return missing(&from.text);
            };
            let x = number(value)
                .ok_or_else(|| permanent(format!("multiply: {} is not a number", from.text)))?;
            let by = match (by, by_path) {
                (Some(by), _) => {
                    number(by).ok_or_else(|| permanent("multiply: `by` is not a number"))?
                }
                (None, Some(path)) => path
                    .get(doc)
                    .and_then(number)
                    .ok_or_else(|| permanent(format!("multiply: {} is not a number", path.text)))?,
                (None, None) => return Err(permanent("multiply needs `by` or `by_path`")),
            };
            set(doc, to, x.mul(by).to_value("multiply")?)
        }
    }
}

/// The mapping from config, read once per instance (config never changes
/// while an instance lives).
fn mapping() -> Result<&'static [Operation], TransformError> {
    static MAPPING: OnceLock<Result<Vec<Operation>, String>> = OnceLock::new();
    let parsed = MAPPING.get_or_init(|| match config::json("mapping") {
        Some(Ok(Value::Array(ops))) => ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                Operation::parse(op).map_err(|e| match e {
                    TransformError::Permanent(m) | TransformError::Retryable(m) => {
                        format!("mapping[{i}]: {m}")
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>(),
        Some(Ok(_)) => Err("config `mapping` must be an array of operations".into()),
        Some(Err(e)) => Err(format!("config `mapping` is not valid JSON: {e}")),
        None => Ok(Vec::new()),
    });
    match parsed {
        Ok(ops) => Ok(ops),
        Err(e) => Err(permanent(e.clone())),
    }
}

/// Applies one mapping operation to a [`Document`]: only the top-level
/// members the operation's pointers name are parsed; a top-level `drop`
/// parses nothing.
pub fn apply_to(doc: &mut Document, op: &Operation) -> Result<(), TransformError> {
    let unreadable = |e: serde_json::Error| permanent(format!("event data: {e}"));
    if let Kind::Drop { path } = &op.kind {
        doc.remove(path).map_err(unreadable)?;
        return Ok(());
    }
    doc.edit(&op.pointers(), |v| apply(v, op))
        .map_err(unreadable)?
}

impl Transform for JsonMap {
    fn check_config() -> Result<(), String> {
        config::check_keys(&["mapping", "type"])?;
        mapping().map(|_| ()).map_err(|e| match e {
            TransformError::Permanent(m) | TransformError::Retryable(m) => m,
        })
    }

    fn transform(mut event: Event) -> Result<Vec<Event>, TransformError> {
        let mapping = mapping()?;
        let mut doc = Document::parse(&event.data)
            .map_err(|e| permanent(format!("event data is not JSON: {e}")))?;
        for op in mapping {
            apply_to(&mut doc, op)?;
        }
        let data = doc.to_vec();
        event.data = data;
        event.datacontenttype = Some("application/json".to_string());
        if let Some(ty) = config::get("type") {
            event.type_ = ty;
        }
        Ok(vec![event])
    }
}

weft_sdk::export_transform!(JsonMap);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Applies `ops` in order to `doc`, both on a parsed [`Value`] and on a
    /// [`Document`] of its text (what the transform does), and checks that
    /// both give the same result.
    fn run(doc: Value, ops: Value) -> Result<Value, TransformError> {
        let text = serde_json::to_vec(&doc).unwrap();
        let ops = ops
            .as_array()
            .unwrap()
            .iter()
            .map(Operation::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let whole = ops
            .iter()
            .try_fold(doc, |mut doc, op| apply(&mut doc, op).map(|()| doc));
        let mut lazy = Document::parse(&text).unwrap();
        let by_document = ops
            .iter()
            .try_for_each(|op| apply_to(&mut lazy, op))
            .map(|()| serde_json::from_slice::<Value>(&lazy.to_vec()).unwrap());
        match (&whole, &by_document) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "the document path agrees"),
            (Err(TransformError::Permanent(a)), Err(TransformError::Permanent(b))) => {
                assert_eq!(a, b, "the document path fails the same way")
            }
            other => panic!("the two paths disagree: {other:?}"),
        }
        whole
    }

    fn permanent_message(result: Result<Value, TransformError>) -> String {
        match result {
            Err(TransformError::Permanent(msg)) => msg,
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[test]
    fn rename_copy_drop_and_set_reshape_the_document() {
        let doc = json!({"customer": {"email": "a@b.c", "name": "Ada"}, "id": 7});
        let out = run(
            doc,
            json!([
                {"op": "rename", "from": "/customer/email", "to": "/email"},
                {"op": "copy", "from": "/customer/name", "to": "/billing/name"},
                {"op": "drop", "path": "/customer"},
                {"op": "set", "path": "/currency", "value": "EUR"},
                {"op": "set", "path": "/flags", "value": {"vip": true}},
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"email": "a@b.c", "billing": {"name": "Ada"}, "id": 7, "currency": "EUR", "flags": {"vip": true}})
        );
    }

    #[test]
    fn operations_inside_one_member_see_each_others_changes() {
        let doc = json!({"customer": {"email": "a@b.c", "name": "Ada"}, "n": 2});
        let out = run(
            doc,
            json!([
                {"op": "copy", "from": "/customer/name", "to": "/customer/display"},
                {"op": "rename", "from": "/customer/email", "to": "/customer/contact/email"},
                {"op": "multiply", "from": "/n", "by_path": "/n"},
                {"op": "rename", "from": "/customer/contact", "to": "/customer/reach"},
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"customer": {"name": "Ada", "display": "Ada", "reach": {"email": "a@b.c"}}, "n": 4})
        );
    }

    #[test]
    fn count_sum_and_multiply_compute_fields() {
        let doc = json!({"items": [
            {"qty": 2, "price": 8.5},
            {"qty": "1", "price": 19},
        ]});
        let out = run(
            doc,
            json!([
                {"op": "count", "from": "/items", "to": "/lines"},
                {"op": "sum", "from": "/items", "field": "/qty", "to": "/units"},
                {"op": "sum", "from": "/items", "field": "/price", "times": "/qty", "to": "/total"},
                {"op": "multiply", "from": "/total", "by": 0.2, "to": "/vat"},
                {"op": "set", "path": "/rate", "value": 2},
                {"op": "multiply", "from": "/units", "by_path": "/rate"},
            ]),
        )
        .unwrap();
        assert_eq!(out["lines"], 2);
        assert_eq!(out["units"], 6, "3 units times the rate 2, in place");
        assert_eq!(out["total"], 36);
        assert_eq!(out["vat"].as_f64(), Some(7.2));
        let prices = json!({"items": [1, 2.5, "3"]});
        let out = run(
            prices,
            json!([{"op": "sum", "from": "/items", "to": "/sum"}]),
        )
        .unwrap();
        assert_eq!(
            out["sum"].as_f64(),
            Some(6.5),
            "no field: the elements themselves"
        );
    }

    #[test]
    fn sums_are_exact_for_integers_and_never_silently_null() {
        let sum = |items: Value| {
            run(
                json!({ "items": items }),
                json!([{"op": "sum", "from": "/items", "to": "/sum"}]),
            )
        };
        // Integers past 2^53 stay exact and stay integers.
        let out = sum(json!([263921280452238336u64, 1])).unwrap();
        assert_eq!(out["sum"], json!(263921280452238337u64));
        let out = sum(json!([5000000000000000i64, 5000000000000000i64])).unwrap();
        assert_eq!(out["sum"], json!(10000000000000000i64));
        // Small fractions read well; huge floats are kept, not turned to null.
        assert_eq!(sum(json!([0.1, 0.2])).unwrap()["sum"], json!(0.3));
        assert_eq!(sum(json!([1e300, 1e300])).unwrap()["sum"], json!(2e300));
        // Not numbers: "NaN" and "inf" are refused, and a sum past the
        // largest float is an error, not null.
        for bad in [json!(["NaN"]), json!(["inf"]), json!([1e308, 1e308])] {
            let err = sum(bad.clone()).unwrap_err();
            assert!(
                matches!(err, TransformError::Permanent(_)),
                "{bad}: {err:?}"
            );
        }
        let err = run(
            json!({"x": 1e300}),
            json!([{"op": "multiply", "from": "/x", "by": 1e300}]),
        )
        .unwrap_err();
        assert!(
            matches!(&err, TransformError::Permanent(m) if m.contains("not a finite number")),
            "{err:?}"
        );
    }

    #[test]
    fn a_missing_source_skips_the_operation_unless_it_is_required() {
        let doc = json!({"a": 1});
        let out = run(
            doc.clone(),
            json!([
                {"op": "rename", "from": "/nope", "to": "/b"},
                {"op": "count", "from": "/nope", "to": "/c"},
                {"op": "multiply", "from": "/nope", "by": 2},
            ]),
        )
        .unwrap();
        assert_eq!(out, doc);
        let msg = permanent_message(run(
            doc,
            json!([{"op": "copy", "from": "/nope", "to": "/b", "required": true}]),
        ));
        assert!(msg.contains("required field /nope is missing"), "{msg}");
    }

    #[test]
    fn data_of_the_wrong_shape_is_a_permanent_error_that_says_what_is_wrong() {
        let cases = [
            (
                json!({"items": 3}),
                json!({"op": "count", "from": "/items", "to": "/n"}),
                "count: /items is not an array",
            ),
            (
                json!({"items": [{"x": 1}]}),
                json!({"op": "sum", "from": "/items", "field": "/qty", "to": "/n"}),
                "has no number at '/qty'",
            ),
            (
                json!({"t": "abc"}),
                json!({"op": "multiply", "from": "/t", "by": 2}),
                "multiply: /t is not a number",
            ),
            (
                json!({"t": 1}),
                json!({"op": "multiply", "from": "/t"}),
                "`multiply` needs one of `by` (a number) or `by_path` (a pointer)",
            ),
            (
                json!({"customer": {"email": "a@b"}}),
                json!({"op": "rename", "from": "customer/email", "to": "/email"}),
                "`from` = \"customer/email\" is not a JSON pointer (they start with \"/\", e.g. \"/customer/email\")",
            ),
            (
                json!({"a": 1}),
                json!({"op": "copy", "form": "/a", "to": "/b"}),
                "`copy` takes no field `form` (it takes: from, to)",
            ),
            (
                json!({}),
                json!({"op": "set", "path": "/a"}),
                "`set` needs a `value`",
            ),
            (
                json!({"a": 1}),
                json!({"op": "set", "path": "/a/b", "value": 1}),
                "cannot write /a/b",
            ),
            (
                json!({}),
                json!({"op": "explode"}),
                "unknown mapping operation `explode`",
            ),
            (
                json!({}),
                json!({"op": "rename", "from": "/a"}),
                "lacks the string field `to`",
            ),
        ];
        for (doc, op, expected) in cases {
            let msg = permanent_message(run(doc, json!([op])));
            assert!(msg.contains(expected), "{op}: {msg}");
        }
    }
}
