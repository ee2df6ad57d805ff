//! JSON helpers: JSON-pointer reads and writes that create missing parents,
//! and [`Document`], which parses only the members an edit touches.

use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;

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
                // A missing parent is made an array when the write appends
                // to it ("-"), an object otherwise.
                *cur = if token == "-" {
                    Value::Array(Vec::new())
                } else {
                    Value::Object(Map::new())
                };
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
                    // RFC 6901's "-": the element after the last (append).
                    if token == "-" && last {
                        items.push(value);
                        return true;
                    }
                    let Some(index) = array_index(token) else {
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
                let index = array_index(&last)?;
                (index < items.len()).then(|| items.remove(index))
            }
            _ => None,
        }
    }
}

/// An array index as RFC 6901 writes it (`0`, or digits without a leading
/// zero or sign), as `Value::pointer` reads it: `01` and `+1` name no
/// element, for reads and writes alike.
fn array_index(token: &str) -> Option<usize> {
    let canonical = token == "0"
        || (!token.is_empty()
            && !token.starts_with('0')
            && token.bytes().all(|b| b.is_ascii_digit()));
    if canonical {
        token.parse().ok()
    } else {
        None
    }
}

/// A JSON document whose top-level members stay unparsed text until a read
/// or an edit names them.
///
/// Why it exists: most connectors read or change a few fields of an event
/// and pass the rest on unchanged. Parsing the whole event into a [`Value`]
/// and printing it again allocates every string and number in it; a
/// `Document` checks the whole text against JSON's grammar once (invalid
/// JSON is still an error), builds values only for the members a pointer
/// names, and copies the other members' text to the output as it came.
/// Member order is kept; members an edit adds go last.
///
/// The grammar allows two things a [`Value`] cannot hold: numbers beyond
/// `f64`'s range (`1e400`) and unpaired surrogate escapes (`"\ud800"`). In a
/// member nobody names they pass through untouched; reading or editing such a
/// member is an error, and the document stays as it was. Integers beyond
/// 64 bits are within `f64`'s range: a member that is read or edited holds
/// them as the nearest float (written back as such, e.g. `1e23`), as every
/// [`Value`] does; members nobody names keep their digits.
///
/// ```
/// use weft_sdk::{Document, JsonExt};
/// let body = br#"{"id":7,"customer":{"email":"a@b.c"},"note":"long text"}"#;
/// let mut doc = Document::parse(body)?;
/// assert_eq!(doc.get("/customer/email")?, Some(serde_json::json!("a@b.c")));
/// doc.edit(&["/customer/email", "/email"], |v| {
///     let email = v.take_pointer("/customer/email").unwrap_or_default();
///     v.set_pointer("/email", email)
/// })?;
/// doc.remove("/note")?;
/// assert_eq!(doc.to_vec(), br#"{"id":7,"customer":{},"email":"a@b.c"}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub struct Document<'a> {
    body: Body<'a>,
}

enum Body<'a> {
    /// A JSON object: its members, in order.
    Object(Vec<(Cow<'a, str>, Member<'a>)>),
    /// Anything else (or an object an edit needed whole), parsed.
    Whole(Value),
}

enum Member<'a> {
    /// As it came: checked, not parsed.
    Raw(&'a RawValue),
    /// Parsed (and maybe changed) by an edit.
    Parsed(Value),
}

impl Member<'_> {
    /// The member's value, moved out of a parsed member (a raw one stays).
    fn take(&mut self) -> Result<Value, serde_json::Error> {
        match self {
            Member::Raw(raw) => serde_json::from_str(raw.get()),
            Member::Parsed(v) => Ok(std::mem::take(v)),
        }
    }

    fn value(&self) -> Result<Cow<'_, Value>, serde_json::Error> {
        match self {
            Member::Raw(raw) => serde_json::from_str(raw.get()).map(Cow::Owned),
            Member::Parsed(v) => Ok(Cow::Borrowed(v)),
        }
    }
}

/// Reads a JSON object's members without parsing their values.
struct Members;

impl<'de> Visitor<'de> for Members {
    type Value = Vec<(Cow<'de, str>, Member<'de>)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Self::Value = Vec::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let value = Member::Raw(map.next_value::<&'de RawValue>()?);
            // A repeated key: the last value wins, as with `Value`.
            match members.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => members.push((key, value)),
            }
        }
        Ok(members)
    }
}

/// The top-level member a pointer starts in (`/a/b` → `a`), if the pointer
/// names one.
fn first_token(pointer: &str) -> Option<Cow<'_, str>> {
    let rest = pointer.strip_prefix('/')?;
    let token = rest.split('/').next().unwrap_or(rest);
    Some(if token.contains('~') {
        Cow::Owned(unescape(token))
    } else {
        Cow::Borrowed(token)
    })
}

impl<'a> Document<'a> {
    /// Checks `json` and splits a top-level object into its members.
    pub fn parse(json: &'a [u8]) -> Result<Document<'a>, serde_json::Error> {
        let starts_object = json
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        let body = if starts_object {
            let mut de = serde_json::Deserializer::from_slice(json);
            let members = (&mut de).deserialize_map(Members)?;
            de.end()?;
            Body::Object(members)
        } else {
            Body::Whole(serde_json::from_slice(json)?)
        };
        Ok(Document { body })
    }

    fn index(members: &[(Cow<'a, str>, Member<'a>)], key: &str) -> Option<usize> {
        members.iter().position(|(k, _)| k == key)
    }

    /// The value at `pointer` (`""` is the whole document), if there is one.
    pub fn get(&self, pointer: &str) -> Result<Option<Value>, serde_json::Error> {
        Ok(match (&self.body, first_token(pointer)) {
            (Body::Object(members), Some(key)) => {
                let Some(i) = Self::index(members, &key) else {
                    return Ok(None);
                };
                let value = members[i].1.value()?;
                let rest = &pointer[1 + pointer[1..].find('/').unwrap_or(pointer.len() - 1)..];
                value.pointer(rest).cloned()
            }
            (Body::Object(_), None) => self.to_value()?.pointer(pointer).cloned(),
            (Body::Whole(v), _) => v.pointer(pointer).cloned(),
        })
    }

    /// Runs `f` on an object holding the members `pointers` start in (those
    /// present), then puts back what `f` left there: members it removed are
    /// removed, members it added are added. `f` must only touch what the
    /// pointers name. A pointer that names no member (`""`, or a document
    /// that is not an object) gives `f` the whole document instead. A named
    /// member that cannot become a [`Value`] is an error, before `f` runs.
    pub fn edit<R>(
        &mut self,
        pointers: &[&str],
        f: impl FnOnce(&mut Value) -> R,
    ) -> Result<R, serde_json::Error> {
        let keys: Option<Vec<Cow<'_, str>>> = pointers.iter().map(|p| first_token(p)).collect();
        let (members, keys) = match (&mut self.body, keys) {
            (Body::Object(members), Some(keys)) => (members, keys),
            (Body::Whole(v), _) => return Ok(f(v)),
            (Body::Object(_), None) => {
                let mut whole = self.to_value()?;
                let result = f(&mut whole);
                self.body = Body::Whole(whole);
                return Ok(result);
            }
        };
        let mut named = Map::new();
        for key in &keys {
            // Two pointers into one member take it once.
            if named.contains_key(key.as_ref()) {
                continue;
            }
            let Some(i) = Self::index(members, key) else {
                continue;
            };
            match members[i].1.take() {
                Ok(value) => {
                    named.insert(key.to_string(), value);
                }
                Err(e) => {
                    // Put back what was moved out of parsed members (raw ones
                    // were only read).
                    for (key, value) in named {
                        if let Some(i) = Self::index(members, &key) {
                            if let Member::Parsed(slot) = &mut members[i].1 {
                                *slot = value;
                            }
                        }
                    }
                    return Err(e);
                }
            }
        }
        let mut object = Value::Object(named);
        let result = f(&mut object);
        let Value::Object(mut named) = object else {
            // `f` replaced the object itself: it wanted the whole document.
            self.body = Body::Whole(object);
            return Ok(result);
        };
        members.retain(|(k, _)| !keys.iter().any(|key| key == k) || named.contains_key(k.as_ref()));
        for (key, value) in std::mem::take(&mut named) {
            match Self::index(members, &key) {
                Some(i) => members[i].1 = Member::Parsed(value),
                None => members.push((Cow::Owned(key), Member::Parsed(value))),
            }
        }
        Ok(result)
    }

    /// Removes the value at `pointer`; a whole top-level member goes without
    /// being parsed. Whether there was one.
    pub fn remove(&mut self, pointer: &str) -> Result<bool, serde_json::Error> {
        if !pointer.starts_with('/') {
            // Not a pointer to a member (`""` is the document itself, which
            // cannot be removed from itself).
            return Ok(false);
        }
        if let (Body::Object(members), Some(key)) = (&mut self.body, first_token(pointer)) {
            if !pointer[1..].contains('/') {
                let before = members.len();
                members.retain(|(k, _)| *k != key);
                return Ok(members.len() < before);
            }
        }
        self.edit(&[pointer], |v| v.take_pointer(pointer).is_some())
    }

    /// The document as a [`Value`].
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        match &self.body {
            Body::Object(members) => members
                .iter()
                .map(|(k, m)| Ok((k.to_string(), m.value()?.into_owned())))
                .collect::<Result<Map<_, _>, _>>()
                .map(Value::Object),
            Body::Whole(v) => Ok(v.clone()),
        }
    }

    /// The document as JSON text: untouched members as they came.
    pub fn to_vec(&self) -> Vec<u8> {
        match &self.body {
            Body::Object(members) => {
                let mut out = Vec::with_capacity(
                    2 + members
                        .iter()
                        .map(|(k, m)| {
                            k.len()
                                + 4
                                + match m {
                                    Member::Raw(r) => r.get().len(),
                                    Member::Parsed(_) => 16,
                                }
                        })
                        .sum::<usize>(),
                );
                out.push(b'{');
                for (i, (key, member)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    // Writing to a Vec cannot fail, nor can printing a Value.
                    let _ = serde_json::to_writer(&mut out, key.as_ref());
                    out.push(b':');
                    match member {
                        Member::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
                        Member::Parsed(v) => {
                            let _ = serde_json::to_writer(&mut out, v);
                        }
                    }
                }
                out.push(b'}');
                out
            }
            Body::Whole(v) => serde_json::to_vec(v).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_document_parses_only_what_is_named_and_keeps_the_rest_verbatim() {
        let text =
            br#" {"b": [1, 2.50, "x"], "a" :{"k":"\u00e9"}, "c~/d": 3, "b": {"again": true}} "#;
        let mut doc = Document::parse(text).unwrap();
        let get = |doc: &Document, p: &str| doc.get(p).unwrap();
        assert_eq!(
            get(&doc, "/b/again"),
            Some(json!(true)),
            "the last of a repeated key wins"
        );
        assert_eq!(get(&doc, "/c~0~1d"), Some(json!(3)));
        assert_eq!(get(&doc, "/a/k"), Some(json!("\u{e9}")));
        assert_eq!(get(&doc, "/missing"), None);
        assert_eq!(
            get(&doc, ""),
            Some(json!({"a": {"k": "\u{e9}"}, "b": {"again": true}, "c~/d": 3}))
        );
        // Untouched members keep their text (spacing inside a value, 2.50).
        let n = doc
            .edit(&["/a/k", "/new/x"], |v| {
                let k = v.take_pointer("/a/k");
                v.set_pointer("/new/x", k.unwrap_or(Value::Null));
                1
            })
            .unwrap();
        assert_eq!(n, 1);
        assert!(doc.remove("/c~0~1d").unwrap());
        assert!(!doc.remove("/c~0~1d").unwrap());
        assert_eq!(
            std::str::from_utf8(&doc.to_vec()).unwrap(),
            r#"{"b":{"again": true},"a":{},"new":{"x":"é"}}"#
        );
        // An edit that removes a named member removes it.
        doc.edit(&["/a"], |v| v.take_pointer("/a")).unwrap();
        assert_eq!(
            doc.to_value().unwrap(),
            json!({"b": {"again": true}, "new": {"x": "é"}})
        );
        // Two pointers into one member (parsed by an earlier edit), twice.
        for _ in 0..2 {
            doc.edit(&["/new/x", "/new/y"], |v| {
                let x = v.take_pointer("/new/x");
                v.set_pointer("/new/y", x.unwrap_or(json!("gone")))
            })
            .unwrap();
            doc.edit(&["/new/y", "/new/x"], |v| {
                let y = v.take_pointer("/new/y");
                v.set_pointer("/new/x", y.unwrap_or(json!("gone")))
            })
            .unwrap();
        }
        assert_eq!(get(&doc, "/new"), Some(json!({"x": "é"})));
    }

    #[test]
    fn what_the_grammar_allows_but_a_value_cannot_hold_passes_through_or_fails_cleanly() {
        let text = br#"{"big": 1e400, "odd": "\ud800", "ok": {"n": 1}}"#;
        let mut doc = Document::parse(text).unwrap();
        assert!(doc.get("/big").is_err());
        assert!(doc.get("/odd").is_err());
        assert!(doc.to_value().is_err());
        // An edit naming a bad member fails before it runs, and puts back
        // the members it had already taken (here `ok`, parsed first).
        doc.edit(&["/ok/n"], |v| v.set_pointer("/ok/n", json!(2)))
            .unwrap();
        let ran = std::cell::Cell::new(false);
        assert!(doc.edit(&["/ok/m", "/big"], |_| ran.set(true)).is_err());
        assert!(!ran.get());
        // Removing nothing reads nothing.
        assert!(!doc.remove("").unwrap());
        assert!(!doc.remove("big").unwrap());
        // Untouched, they travel as they came.
        assert!(doc.remove("/odd").unwrap());
        assert_eq!(
            std::str::from_utf8(&doc.to_vec()).unwrap(),
            r#"{"big":1e400,"ok":{"n":2}}"#
        );
    }

    #[test]
    fn a_document_that_is_not_an_object_or_an_edit_of_the_root_works_on_the_whole() {
        let mut doc = Document::parse(b"[1, 2]").unwrap();
        doc.edit(&["/0"], |v| v.set_pointer("/0", json!(9)))
            .unwrap();
        assert_eq!(doc.to_vec(), b"[9,2]");
        let mut doc = Document::parse(br#"{"a": 1}"#).unwrap();
        doc.edit(&[""], |v| v.set_pointer("", json!({"b": 2})))
            .unwrap();
        assert_eq!(doc.to_vec(), br#"{"b":2}"#);
        assert!(!doc.remove("/a").unwrap());
        for bad in [&b"{"[..], b"{\"a\": }", b"{} x", b"", b"{\"a\":1,}"] {
            assert!(
                Document::parse(bad).is_err(),
                "{:?}",
                std::str::from_utf8(bad)
            );
        }
    }

    #[test]
    fn set_creates_parents_and_take_removes() {
        let mut v = json!({"a": 1});
        assert!(v.set_pointer("/b/c", json!(2)));
        assert_eq!(v, json!({"a": 1, "b": {"c": 2}}));
        assert_eq!(v.take_pointer("/a"), Some(json!(1)));
        assert_eq!(v, json!({"b": {"c": 2}}));
        assert!(!v.set_pointer("/b/c/d", json!(3)));
        // "-" appends to an array; past the end is refused.
        let mut v = json!({"items": [1]});
        assert!(v.set_pointer("/items/-", json!(2)));
        assert!(!v.set_pointer("/items/5", json!(3)));
        assert_eq!(v, json!({"items": [1, 2]}));
        // Appending under a missing parent makes it an array.
        assert!(v.set_pointer("/tags/-", json!("new")));
        assert_eq!(v["tags"], json!(["new"]));
    }

    #[test]
    fn array_indices_follow_rfc_6901_for_writes_as_for_reads() {
        let mut doc = serde_json::json!({"items": ["a", "b", "c"]});
        for odd in ["/items/01", "/items/+1", "/items/"] {
            assert_eq!(doc.pointer(odd), None, "{odd}");
            assert!(!doc.set_pointer(odd, serde_json::json!("x")), "{odd}");
            assert_eq!(doc.take_pointer(odd), None, "{odd}");
        }
        // "-" names no element to read or take (it is where an append goes).
        assert_eq!(doc.pointer("/items/-"), None);
        assert_eq!(doc.take_pointer("/items/-"), None);
        assert_eq!(doc, serde_json::json!({"items": ["a", "b", "c"]}));
        assert!(doc.set_pointer("/items/0", serde_json::json!("z")));
        assert_eq!(doc.take_pointer("/items/1"), Some(serde_json::json!("b")));
        assert_eq!(doc, serde_json::json!({"items": ["z", "c"]}));
    }
}
