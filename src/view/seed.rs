//! The deserializer that builds a view: serde seeds that build what a
//! [`Shape`] names, skip the rest unbuilt, and count what they build.

use super::budget::{Budget, ENTRY, NODE};
use super::shape::Shape::{self, Annotations, Each, EnvVars, Members, Text};
use super::Keys;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::fmt;

/// [`Shape::All`], to borrow where a member's shape is not in the tree.
static ALL: Shape = Shape::All;

pub(super) struct ShapeSeed<'s, 'c, 'de> {
    pub(super) shape: &'s Shape,
    pub(super) keys: &'s Keys,
    pub(super) budget: &'s Budget,
    /// Where a [`Shape::Text`] below leaves its text.
    pub(super) text: &'c mut Option<&'de RawValue>,
}

impl<'s, 'de> ShapeSeed<'s, '_, 'de> {
    /// A seed for a member or element of shape `shape`, under no
    /// [`Shape::Text`] (or one whose text is not kept).
    fn child<'c>(
        &self,
        shape: &'s Shape,
        text: &'c mut Option<&'de RawValue>,
    ) -> ShapeSeed<'s, 'c, 'de> {
        ShapeSeed {
            shape,
            keys: self.keys,
            budget: self.budget,
            text,
        }
    }
}

impl<'de> DeserializeSeed<'de> for ShapeSeed<'_, '_, 'de> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.shape {
            Text(inner) => {
                let raw = <&'de RawValue>::deserialize(d)?;
                let value = super::parse(raw.get(), inner, self.keys, self.budget)
                    .map_err(de::Error::custom)?
                    .value;
                *self.text = (raw.get() != "null").then_some(raw);
                Ok(value)
            }
            _ => d.deserialize_any(self),
        }
    }
}

/// Builds the value the shape names. Scalars and containers of another type
/// than the shape expects are built whole, as `Value` would build them.
impl<'de> Visitor<'de> for ShapeSeed<'_, '_, 'de> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    // A scalar's `Value` lives in its parent's slot, counted there; only a
    // string's bytes are its own.
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.budget.spend(v.len())?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.budget.spend(v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Slots::new(self.budget);
        if let EnvVars = self.shape {
            while let Some(item) = seq.next_element_seed(EnvVarSeed(self.keys, self.budget))? {
                items.push(item)?;
            }
            return Ok(Value::Array(items.0));
        }
        let element = match self.shape {
            Each(element) => &**element,
            _ => &ALL,
        };
        let mut unused = None; // no Text inside Each
        while let Some(item) = seq.next_element_seed(self.child(element, &mut unused))? {
            items.push(item)?;
        }
        Ok(Value::Array(items.0))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let members = match self.shape {
            Members(members) => members.as_slice(),
            Annotations => {
                let mut kept = Map::new();
                let mut unused = None;
                while let Some(key) = map.next_key_seed(KeySeed)? {
                    if self.keys.annotation(&key) {
                        self.budget.spend(ENTRY + key.len())?;
                        let value = map.next_value_seed(self.child(&ALL, &mut unused))?;
                        kept.insert(key.into_owned(), value);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                return Ok(Value::Object(kept));
            }
            _ => {
                // Not the object the shape expects (or `All`): build it whole.
                let mut whole = Map::new();
                let mut unused = None;
                while let Some(key) = map.next_key_seed(KeySeed)? {
                    self.budget.spend(ENTRY + key.len())?;
                    let value = map.next_value_seed(self.child(&ALL, &mut unused))?;
                    whole.insert(key.into_owned(), value);
                }
                return Ok(Value::Object(whole));
            }
        };
        let mut kept = Map::new();
        // The text comes from the last occurrence of the one member that can
        // hold it, just as `insert` keeps the last of duplicate keys.
        let mut text = None;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match members.iter().find(|(name, _)| *name == key) {
                Some((_, shape)) => {
                    self.budget.spend(ENTRY + key.len())?;
                    let mut local = None;
                    let value = map.next_value_seed(self.child(shape, &mut local))?;
                    if shape.has_text() {
                        text = Some(local);
                    }
                    kept.insert(key.into_owned(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if let Some(text) = text {
            *self.text = text;
        }
        Ok(Value::Object(kept))
    }
}

/// One element of an [`Shape::EnvVars`] list: `{name, value}` when [`Keys`]
/// names it, else `null`. Read as text first, so a variable nobody reads
/// costs no allocation; its `null` placeholder is charged all the same.
struct EnvVarSeed<'s>(&'s Keys, &'s Budget);

impl<'de> DeserializeSeed<'de> for EnvVarSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EnvVarSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an environment variable")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let (mut name, mut value) = (None, None);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match &*key {
                "name" => name = Some(map.next_value::<&'de RawValue>()?),
                "value" => value = Some(map.next_value::<&'de RawValue>()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let read = name.and_then(string).is_some_and(|n| self.0.env_var(&n));
        if !read {
            return Ok(Value::Null);
        }
        let mut kept = Map::new();
        for (key, raw) in [("name", name), ("value", value)] {
            if let Some(raw) = raw {
                self.1.spend(ENTRY + key.len())?;
                let v = super::parse(raw.get(), &ALL, self.0, self.1)
                    .map_err(de::Error::custom)?
                    .value;
                kept.insert(key.to_string(), v);
            }
        }
        Ok(Value::Object(kept))
    }

    // Anything else is no variable `lease` could read.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value, E> {
        self.placeholder()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Value, E> {
        self.placeholder()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Value, E> {
        self.placeholder()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value, E> {
        self.placeholder()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Value, E> {
        self.placeholder()
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.placeholder()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.placeholder()
    }
}

impl EnvVarSeed<'_> {
    /// The `null` that keeps an unread variable's index (its slot is
    /// counted by the array).
    fn placeholder<E>(&self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// An array being built, its buffer counted as it grows: the new buffer
/// while the old one still exists, then the old one given back. Grows as
/// `Vec` would (doubling, from 4), but on purpose, so that what is counted
/// is what is allocated.
struct Slots<'b>(Vec<Value>, &'b Budget);

impl<'b> Slots<'b> {
    fn new(budget: &'b Budget) -> Self {
        Slots(Vec::new(), budget)
    }

    fn push<E: de::Error>(&mut self, item: Value) -> Result<(), E> {
        if self.0.len() == self.0.capacity() {
            let old = self.0.capacity();
            let new = (old * 2).max(4);
            self.1.spend(new * NODE)?;
            self.0.reserve_exact(new - old);
            self.1.refund(old * NODE);
        }
        self.0.push(item);
        Ok(())
    }
}

/// The string `raw` holds, borrowed unless it has escapes; `None` for
/// anything but a string.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    KeySeed
        .deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
        .ok()
}

/// A member name, borrowed from the text unless it has escapes: most names
/// are skipped, and need no allocation.
pub struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}
