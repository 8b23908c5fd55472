//! The part of an admitted object that the policies read.
//!
//! A Pod or Deployment arrives as JSON text. Building a whole
//! `serde_json::Value` from it was most of the time `/mutate` took: one
//! allocation per node, an `IndexMap` insert with SipHash per member, and a
//! second walk to drop the tree. Most of that tree (images, probes, volumes,
//! `managedFields`, `status`) no policy ever reads.
//!
//! So the request path parses the object through a [`Shape`]: a static tree
//! naming the members the policies read. Members outside it are skipped by
//! the parser without being built; members inside it become an ordinary
//! `Value`, so the policies and [`Mutation`](crate::patch::Mutation) work on
//! the view exactly as on the whole object. A patch is paths and values, so
//! it needs nothing more.
//!
//! ```text
//! POD         metadata { name, generateName, namespace, annotations{R} }
//!             spec { os*, nodeSelector*, dnsConfig*, terminationGracePeriodSeconds*,
//!                    containers[] / initContainers[] {
//!                      name*, env[R] { name*, value* }, args*, lifecycle { preStop* } } }
//! DEPLOYMENT  metadata { name, generateName, namespace, annotations{R} }
//!             spec { strategy*, template (as text) { metadata { annotations{R} } } }
//! OTHER       metadata { name, generateName, namespace, annotations{R} }  (any other kind)
//!
//!   * the whole subtree
//!   R only the annotation keys and environment variables the policy file
//!     names ([`Reads`]): calmplane's own annotations, the lease selector
//!     annotations and variables. A Pod's ten ordinary variables were half of
//!     the time a typical Pod took; they now cost a skip.
//! ```
//!
//! A value whose type is not the one the shape expects (`spec: "oops"`,
//! `containers: {}`) is kept whole, so a policy sees the same wrong shape it
//! would see in the whole object and refuses the same way.
//!
//! `rollout-history` compares the whole pod template of an UPDATE with the
//! stored one. It does that on the two templates' JSON text ([`Templates`]),
//! never on the view.
//!
//! The shapes and [`Reads`] are the one place that says what the policies
//! read. A policy that reads a member outside them would see it missing, so
//! `calmplane_testkit::review::view_matches_whole` runs the policies over the
//! view and over the whole object and requires the same patch, changes and
//! warnings: in every policy test (`tests/policies.rs`), on generated objects
//! (`tests/properties.rs`), on every corpus manifest (`tests/corpus.rs`) and
//! on every fuzz input (`fuzz_check`).
//!
//! `/preview` shows the whole patched object, so it parses with
//! [`Extent::Whole`].
//!
//! # What a view may cost
//!
//! A `serde_json::Value` is 72 bytes, so a body can become a much larger
//! tree: `"args": ["", "", ...]` costs 24 times its text, and more while its
//! array grows. Everything the parser builds is counted by a [`Budget`]:
//! each object may cost at most [`crate::budget::view_limit`] of its body,
//! and on the server all views in flight together draw from one pool
//! ([`crate::budget::VIEW_POOL`]), so the sum is bounded whatever the mix of
//! requests. The parse stops with [`Budget::exceeded`] set when either runs
//! out. Members skipped unbuilt cost nothing.

use crate::policy::Kind;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One `Value`: what a slot of an array costs.
const NODE: usize = std::mem::size_of::<Value>();

/// What a map entry costs beyond its key's text: the `Value`, the key's
/// `String`, the hash, and the map's index for it, twice over for the slack
/// a map keeps as it grows (`serde_json::Map` is an `IndexMap`).
const ENTRY: usize = 2 * (NODE + std::mem::size_of::<String>() + 3 * std::mem::size_of::<usize>());

/// How much a budget draws from its pool at a time: one draw covers the
/// view of a typical Pod, so most requests touch the pool once.
const DRAW: usize = 64 * 1024;

/// Why a parse stopped for want of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// The view would cost more than this object may (its `limit`).
    Limit,
    /// The views of the requests in flight have taken the whole pool.
    Pool,
}

/// The bytes a view may take; see the module docs. Counted as the view is
/// built: arrays by the buffers they allocate as they grow (the old buffer
/// is counted until the new one replaces it), maps by [`ENTRY`] per member,
/// strings by their bytes. With a pool, the budget draws what it counts from
/// it, [`DRAW`] bytes at a time, and gives it back when dropped: keep the
/// budget as long as the view.
#[derive(Debug)]
pub struct Budget {
    used: Cell<usize>,
    limit: usize,
    pool: Option<Arc<Semaphore>>,
    /// What has been drawn from the pool, held until the budget is dropped.
    drawn: RefCell<Option<OwnedSemaphorePermit>>,
    exceeded: Cell<Option<Exceeded>>,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            used: Cell::new(0),
            limit,
            pool: None,
            drawn: RefCell::new(None),
            exceeded: Cell::new(None),
        }
    }

    /// A budget of `limit` bytes that also draws what it uses from `pool`
    /// (one permit per byte), shared with the other requests in flight.
    pub fn drawing_from(limit: usize, pool: Arc<Semaphore>) -> Budget {
        Budget {
            pool: Some(pool),
            ..Budget::new(limit)
        }
    }

    /// No limit: for input the user chose to run on (`calmplane preview -f`,
    /// `calmplane audit -f`), not for a server.
    pub fn unlimited() -> Budget {
        Budget::new(usize::MAX)
    }

    /// The limit this budget started with.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// What the view has taken so far, in bytes.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Why a parse stopped for want of memory, if it did.
    pub fn exceeded(&self) -> Option<Exceeded> {
        self.exceeded.get()
    }

    /// Take `bytes`, or fail the parse.
    fn spend<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let used = self.used.get().saturating_add(bytes);
        if used > self.limit {
            return Err(self.fail(Exceeded::Limit));
        }
        if let Some(pool) = &self.pool {
            let mut drawn = self.drawn.borrow_mut();
            let have = drawn.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
            if used > have {
                let more = (used - have).div_ceil(DRAW) * DRAW;
                let permit = u32::try_from(more)
                    .ok()
                    .and_then(|n| pool.clone().try_acquire_many_owned(n).ok());
                match (permit, drawn.as_mut()) {
                    (Some(p), Some(held)) => held.merge(p),
                    (Some(p), None) => *drawn = Some(p),
                    (None, _) => return Err(self.fail(Exceeded::Pool)),
                }
            }
        }
        self.used.set(used);
        Ok(())
    }

    /// Give back `bytes` freed while building (an array's old buffer).
    fn refund(&self, bytes: usize) {
        self.used.set(self.used.get().saturating_sub(bytes));
    }

    fn fail<E: de::Error>(&self, why: Exceeded) -> E {
        self.exceeded.set(Some(why));
        match why {
            Exceeded::Limit => E::custom(format_args!(
                "the object would take more than {} bytes of memory to read; refused",
                self.limit
            )),
            Exceeded::Pool => E::custom("calmplane is busy: the requests in flight hold all the memory it sets aside for them"),
        }
    }
}

/// Which members of a JSON value to build.
#[derive(Debug)]
pub enum Shape {
    /// The whole subtree.
    All,
    /// Only these members of an object, each with its own shape; the other
    /// members are skipped unbuilt.
    Members(&'static [(&'static str, Shape)]),
    /// Every element of an array, each with this shape.
    Each(&'static Shape),
    /// The whole subtree's JSON text, kept beside the view ([`Parsed::text`]),
    /// and this shape of it in the view. At most one per shape, and not
    /// inside [`Shape::Each`].
    Text(&'static Shape),
    /// An object of annotations: only the keys in [`Reads`] are built.
    Annotations,
    /// A list of environment variables: only those whose `name` is in
    /// [`Reads`] are built (their `name` and `value`); the others become
    /// `null`, so that every variable keeps its index in the patch's paths.
    EnvVars,
}

use Shape::{All, Annotations, Each, EnvVars, Members, Text};

impl Shape {
    /// Whether a [`Shape::Text`] is in this shape.
    pub fn has_text(&self) -> bool {
        match self {
            All | Each(_) | Annotations | EnvVars => false,
            Text(_) => true,
            Members(members) => members.iter().any(|(_, shape)| shape.has_text()),
        }
    }
}

/// `metadata` as every policy and the request log read it.
const METADATA: Shape = Members(&[
    ("name", All),
    ("generateName", All),
    ("namespace", All),
    ("annotations", Annotations),
]);

/// A container: `lease` reads `env` and `args`, `prestop` reads `name` and
/// whether `lifecycle.preStop` is set.
const CONTAINER: Shape = Members(&[
    ("name", All),
    ("env", EnvVars),
    ("args", All),
    ("lifecycle", Members(&[("preStop", All)])),
]);

/// What the Pod policies (`lease`, `dns`, `prestop`) and the pipeline read.
pub const POD: Shape = Members(&[
    ("metadata", METADATA),
    (
        "spec",
        Members(&[
            ("os", All),
            ("nodeSelector", All),
            ("dnsConfig", All),
            ("terminationGracePeriodSeconds", All),
            ("containers", Each(&CONTAINER)),
            ("initContainers", Each(&CONTAINER)),
        ]),
    ),
]);

/// An object of a kind no policy handles: only its metadata, which names it
/// in the logs and reports.
pub const OTHER: Shape = Members(&[("metadata", METADATA)]);

/// What `rollout-history` writes in the pod template. It compares the rest
/// as text, so the template is kept as text too.
const TEMPLATE: Shape = Members(&[("metadata", Members(&[("annotations", Annotations)]))]);

/// What the Deployment policies (`rollout`, `rollout-history`) read.
pub const DEPLOYMENT: Shape = Members(&[
    ("metadata", METADATA),
    (
        "spec",
        Members(&[("strategy", All), ("template", Text(&TEMPLATE))]),
    ),
]);

impl Kind {
    /// The kind of a request's group/version/kind.
    pub fn of(gvk: &kube::core::GroupVersionKind) -> Option<Kind> {
        Kind::from_gvk(&gvk.group, &gvk.version, &gvk.kind)
    }

    /// The members of an object of this kind that the policies read.
    pub fn shape(self) -> &'static Shape {
        match self {
            Kind::Pod => &POD,
            Kind::Deployment => &DEPLOYMENT,
        }
    }
}

/// How much of an admitted object to build.
#[derive(Debug, Clone, Copy)]
pub enum Extent<'r> {
    /// Only what the policies read: `/mutate` and `/report`, which answer
    /// with a patch. The pipeline says what its policy file makes them read.
    Read(&'r Reads),
    /// Everything: `/preview` and `calmplane preview`, which show the whole
    /// patched object.
    Whole,
}

/// What the configured policies read beyond what the shapes name: which
/// annotation keys and which environment variables. Built with the
/// [`Pipeline`](crate::pipeline::Pipeline) from the same policy file, so a
/// reload changes both at once.
#[derive(Debug, Clone)]
pub struct Reads {
    /// Annotation keys any policy reads.
    annotations: Vec<String>,
    /// Environment variable names `lease` rewrites.
    env_names: Vec<String>,
    /// Build every annotation and variable: for pipelines of policies that
    /// are not built from a policy file, whose reads are unknown.
    everything: bool,
}

impl Reads {
    /// What the policies of `config` read.
    pub fn new(config: &crate::config::Config) -> Reads {
        let ours = [
            crate::SKIP_ANNOTATION,
            crate::LEASE_SCOPE_ANNOTATION,
            crate::ROLLOUTS_ANNOTATION,
        ];
        let mut annotations: Vec<String> = ours.iter().map(|k| k.to_string()).collect();
        annotations.extend(config.lease.annotations.iter().cloned());
        Reads {
            annotations,
            env_names: config.lease.env_names.clone(),
            everything: false,
        }
    }

    /// Every annotation and every variable.
    pub fn everything() -> Reads {
        EVERYTHING.clone()
    }

    fn annotation(&self, key: &str) -> bool {
        self.everything || self.annotations.iter().any(|k| k == key)
    }

    fn env_var(&self, name: &str) -> bool {
        self.everything || self.env_names.iter().any(|n| n == name)
    }
}

/// Whether a view built with `shape` and `reads` holds the member at `path`
/// as the object has it, so that a patch operation there says what it means.
/// `doc` is the view (as edited so far).
///
/// A view leaves out what no policy reads. Writing a member it left out
/// would be wrong in a way no test of the view alone can see: the view has
/// no such member, so [`Mutation`](crate::patch::Mutation) would `add` it,
/// and on the real object `add` replaces whatever is there (an annotation
/// nobody read, a whole `spec`). So every path a policy writes must be named
/// by the shape: a member of [`Shape::Members`], anything inside
/// [`Shape::All`], an element of [`Shape::Each`], an annotation [`Reads`]
/// names, or the `name` and `value` of an environment variable that was read.
pub fn holds(shape: &Shape, reads: &Reads, doc: &Value, path: &[&str]) -> bool {
    let mut shape = shape;
    for (i, seg) in path.iter().enumerate() {
        while let Text(inner) = shape {
            shape = inner;
        }
        match shape {
            All => return true,
            Members(members) => match members.iter().find(|(name, _)| name == seg) {
                Some((_, inner)) => shape = inner,
                None => return false,
            },
            Each(element) => {
                if seg.parse::<usize>().is_err() {
                    return false;
                }
                shape = element;
            }
            Annotations => return reads.annotation(seg),
            EnvVars => {
                // A new variable is written whole; an existing one only if
                // it was read (an unread one is a `null` placeholder).
                let existing = crate::patch::lookup(doc, &path[..=i]);
                return match (existing, path.get(i + 1)) {
                    (None, _) => seg.parse::<usize>().is_ok(),
                    (Some(Value::Object(_)), None | Some(&"name") | Some(&"value")) => {
                        path.len() <= i + 2
                    }
                    _ => false,
                };
            }
            Text(_) => unreachable!("unwrapped above"),
        }
    }
    true
}

/// [`Reads::everything`], for [`Extent::Whole`].
pub static EVERYTHING: &Reads = &Reads {
    annotations: Vec::new(),
    env_names: Vec::new(),
    everything: true,
};

/// A view, and the text its shape keeps.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The members the shape names, built.
    pub value: Value,
    /// The text of the member the shape marks [`Shape::Text`], when the
    /// object has it and it is not `null`.
    pub text: Option<&'a RawValue>,
}

/// Build the members of `text` that `shape` and `reads` name, charging what
/// is built to `budget`.
pub fn parse<'a>(
    text: &'a str,
    shape: &Shape,
    reads: &Reads,
    budget: &Budget,
) -> Result<Parsed<'a>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Seed(shape, reads, budget).deserialize(&mut de)?;
    de.end()?;
    Ok(parsed)
}

/// [`parse`] as a `DeserializeSeed`, to build a view in the same pass that
/// reads what surrounds it (the AdmissionReview envelope). Only for
/// serde_json's deserializers: [`Shape::Text`] borrows a `RawValue`.
pub struct Seed<'s>(pub &'s Shape, pub &'s Reads, pub &'s Budget);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Parsed<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Parsed<'de>, D::Error> {
        let mut text = None;
        let value = ShapeSeed {
            shape: self.0,
            reads: self.1,
            budget: self.2,
            text: &mut text,
        }
        .deserialize(d)?;
        Ok(Parsed { value, text })
    }
}

/// The pod templates of an UPDATE, as the apiserver sent them. `None` is
/// no template: absent, `null`, or an object that is not a Deployment.
#[derive(Debug, Clone, Copy)]
pub struct Templates<'a> {
    /// `spec.template` of the object being admitted.
    pub object: Option<&'a RawValue>,
    /// `spec.template` of the stored object.
    pub old_object: Option<&'a RawValue>,
}

struct ShapeSeed<'s, 'c, 'de> {
    shape: &'s Shape,
    reads: &'s Reads,
    budget: &'s Budget,
    /// Where a [`Shape::Text`] below leaves its text.
    text: &'c mut Option<&'de RawValue>,
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
            reads: self.reads,
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
                let value = parse(raw.get(), inner, self.reads, self.budget)
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
            while let Some(item) = seq.next_element_seed(EnvVarSeed(self.reads, self.budget))? {
                items.push(item)?;
            }
            return Ok(Value::Array(items.0));
        }
        let element = match self.shape {
            Each(element) => *element,
            _ => &All,
        };
        let mut unused = None; // no Text inside Each
        while let Some(item) = seq.next_element_seed(self.child(element, &mut unused))? {
            items.push(item)?;
        }
        Ok(Value::Array(items.0))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let members = match self.shape {
            Members(members) => *members,
            Annotations => {
                let mut kept = Map::new();
                let mut unused = None;
                while let Some(key) = map.next_key_seed(KeySeed)? {
                    if self.reads.annotation(&key) {
                        self.budget.spend(ENTRY + key.len())?;
                        let value = map.next_value_seed(self.child(&All, &mut unused))?;
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
                    let value = map.next_value_seed(self.child(&All, &mut unused))?;
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

/// One element of an [`Shape::EnvVars`] list: `{name, value}` when [`Reads`]
/// names it, else `null`. Read as text first, so a variable nobody reads
/// costs no allocation; its `null` placeholder is charged all the same.
struct EnvVarSeed<'s>(&'s Reads, &'s Budget);

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
                let v = parse(raw.get(), &All, self.0, self.1)
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
pub(crate) struct KeySeed;

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_the_named_members() {
        let text = r#"{"metadata": {"name": "p", "uid": "u", "annotations": {"a/b": "1"}},
            "spec": {"containers": [{"name": "c", "image": "i", "env": [{"name": "E", "valueFrom": {}}],
                                     "lifecycle": {"postStart": {}, "preStop": {"sleep": {"seconds": 1}}}}, 3],
                     "volumes": [{"name": "v"}], "dnsConfig": {"options": []}},
            "status": {"phase": "Pending"}}"#;
        let view = parse(text, &POD, EVERYTHING, &Budget::unlimited())
            .unwrap()
            .value;
        assert_eq!(
            view,
            json!({"metadata": {"name": "p", "annotations": {"a/b": "1"}},
                   "spec": {"containers": [{"name": "c", "env": [{"name": "E"}],
                                            "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}}, 3],
                            "dnsConfig": {"options": []}}})
        );
    }

    #[test]
    fn unexpected_types_are_kept_whole() {
        let text = r#"{"metadata": ["x", {"name": 1}], "spec": {"containers": {"0": {"image": "i"}}}, "kind": 1.5}"#;
        let view = parse(text, &POD, EVERYTHING, &Budget::unlimited())
            .unwrap()
            .value;
        assert_eq!(
            view,
            json!({"metadata": ["x", {"name": 1}], "spec": {"containers": {"0": {"image": "i"}}}})
        );
        assert_eq!(
            parse("null", &POD, EVERYTHING, &Budget::unlimited())
                .unwrap()
                .value,
            Value::Null
        );
        assert_eq!(
            parse(r#""s""#, &DEPLOYMENT, EVERYTHING, &Budget::unlimited())
                .unwrap()
                .value,
            json!("s")
        );
    }

    #[test]
    fn escaped_names_and_duplicates_read_as_value_reads_them() {
        let text = r#"{"meta\u0064ata": {"name": "a", "name": "b"}, "spec": {}}"#;
        let view = parse(text, &POD, EVERYTHING, &Budget::unlimited())
            .unwrap()
            .value;
        let whole: Value = serde_json::from_str(text).unwrap();
        assert_eq!(view, whole);
    }

    #[test]
    fn skipped_members_must_still_be_json() {
        assert!(parse(
            r#"{"status": {"phase": }}"#,
            &POD,
            EVERYTHING,
            &Budget::unlimited()
        )
        .is_err());
        assert!(parse(r#"{"status": 1} x"#, &POD, EVERYTHING, &Budget::unlimited()).is_err());
    }

    #[test]
    fn reads_only_the_annotations_and_variables_the_policy_file_names() {
        let reads = Reads::new(&crate::config::Config::default());
        let text = r#"{"metadata": {"annotations": {"calmplane.dev/skip": "dns", "other": "x"}},
            "spec": {"containers": [{"env": [{"name": "A", "value": "1"}, 7,
                {"value": "metadata.name=p", "name": "LEASE_SELECTOR", "valueFrom": null},
                {"name": "LEASE_SELECTOR\u0021"}]}]}}"#;
        let view = parse(text, &POD, &reads, &Budget::unlimited())
            .unwrap()
            .value;
        assert_eq!(
            view,
            json!({"metadata": {"annotations": {"calmplane.dev/skip": "dns"}},
                   "spec": {"containers": [{"env": [null, null,
                       {"name": "LEASE_SELECTOR", "value": "metadata.name=p"}, null]}]}})
        );
        let everything = parse(text, &POD, EVERYTHING, &Budget::unlimited())
            .unwrap()
            .value;
        assert_eq!(everything["metadata"]["annotations"]["other"], "x");
        assert_eq!(
            everything["spec"]["containers"][0]["env"][0],
            json!({"name": "A", "value": "1"})
        );
        assert_eq!(everything["spec"]["containers"][0]["env"][1], Value::Null);
    }

    #[test]
    fn keeps_the_template_text_beside_its_view() {
        let text = r#"{"spec": {"replicas": 1, "template": {"metadata": {"annotations": {"a": "1"}, "labels": {}}, "spec": {}}}}"#;
        let parsed = parse(text, &DEPLOYMENT, EVERYTHING, &Budget::unlimited()).unwrap();
        assert_eq!(
            parsed.value,
            json!({"spec": {"template": {"metadata": {"annotations": {"a": "1"}}}}})
        );
        assert_eq!(
            parsed.text.map(RawValue::get),
            Some(r#"{"metadata": {"annotations": {"a": "1"}, "labels": {}}, "spec": {}}"#)
        );
        // A null or missing template has no text; a list is not a spec; of
        // duplicates the last counts, as in the view itself.
        for (text, found) in [
            (r#"{"spec": {"template": null}}"#, None),
            (r#"{"spec": {}}"#, None),
            (r#"{"spec": [{"template": 1}]}"#, None),
            (r#"{"spec": {"template": 1, "template": 2}}"#, Some("2")),
            (r#"{"spec": {"template": 1}, "spec": {}}"#, None),
            (r#"{"sp\u0065c": {"template": 3}}"#, Some("3")),
        ] {
            let parsed = parse(text, &DEPLOYMENT, EVERYTHING, &Budget::unlimited()).unwrap();
            assert_eq!(parsed.text.map(RawValue::get), found, "{text}");
        }
    }

    #[test]
    fn a_view_holds_what_its_shape_names_and_nothing_else() {
        let reads = Reads::new(&crate::config::Config::default());
        let pod = json!({"spec": {"containers": [{"env": [null, {"name": "LEASE_SELECTOR", "value": "x"}]}]}});
        let holds = |path: &[&str]| holds(&POD, &reads, &pod, path);
        assert!(holds(&["spec", "dnsConfig", "options"]));
        assert!(holds(&["spec", "terminationGracePeriodSeconds"]));
        assert!(holds(&["spec", "containers", "0", "lifecycle", "preStop"]));
        assert!(holds(&[
            "metadata",
            "annotations",
            "calmplane.dev/lease-selector"
        ]));
        assert!(holds(&["spec", "containers", "0", "env", "1", "value"]));
        assert!(holds(&["spec", "containers", "0", "env", "2"]));
        // Members the view leaves out, or keeps only in part.
        assert!(!holds(&["spec", "volumes"]));
        assert!(!holds(&["spec", "containers", "0", "image"]));
        assert!(!holds(&[
            "spec",
            "containers",
            "0",
            "lifecycle",
            "postStart"
        ]));
        assert!(!holds(&["metadata", "annotations", "someone-elses"]));
        assert!(!holds(&["metadata", "labels", "app"]));
        assert!(!holds(&["spec", "containers", "0", "env", "0", "value"]));
        assert!(!holds(&[
            "spec",
            "containers",
            "0",
            "env",
            "1",
            "valueFrom"
        ]));
        // A Deployment's template is kept as text, its annotations in the view.
        let d = json!({});
        assert!(holds_in(
            &DEPLOYMENT,
            &reads,
            &d,
            &[
                "spec",
                "template",
                "metadata",
                "annotations",
                "calmplane.dev/lease-scope"
            ]
        ));
        assert!(!holds_in(
            &DEPLOYMENT,
            &reads,
            &d,
            &["spec", "template", "spec", "containers"]
        ));
        assert!(holds_in(
            &DEPLOYMENT,
            &reads,
            &d,
            &["spec", "strategy", "rollingUpdate", "maxSurge"]
        ));
        assert!(!holds_in(&DEPLOYMENT, &reads, &d, &["spec", "replicas"]));
    }

    fn holds_in(shape: &Shape, reads: &Reads, doc: &Value, path: &[&str]) -> bool {
        holds(shape, reads, doc, path)
    }

    #[test]
    fn a_view_that_would_cost_more_than_its_budget_is_refused() {
        // Two million empty args: 6 MB of text, 144 MB of `Value`s.
        let args = vec!["\"\""; 2_000_000].join(",");
        let text = format!(r#"{{"spec": {{"containers": [{{"name": "c", "args": [{args}]}}]}}}}"#);
        let limit = crate::budget::view_limit(text.len());
        let budget = Budget::new(limit);
        let err = parse(&text, &POD, EVERYTHING, &budget).unwrap_err();
        assert_eq!(budget.exceeded(), Some(Exceeded::Limit));
        assert!(
            err.to_string()
                .contains(&format!("more than {limit} bytes")),
            "{err}"
        );
        // Unread variables keep their indexes with a `null` each: counted too.
        let env = vec!["1"; 200_000].join(",");
        let text = format!(r#"{{"spec": {{"containers": [{{"env": [{env}]}}]}}}}"#);
        let budget = Budget::new(crate::budget::view_limit(text.len()));
        assert!(parse(&text, &POD, EVERYTHING, &budget).is_err());
        assert_eq!(budget.exceeded(), Some(Exceeded::Limit));
        // A member of the wrong type is built whole, and charged whole.
        let nested = vec!["[]"; 100_000].join(",");
        let text = format!(r#"{{"metadata": [{nested}]}}"#);
        let budget = Budget::new(crate::budget::view_limit(text.len()));
        assert!(parse(&text, &POD, EVERYTHING, &budget).is_err());
    }

    #[test]
    fn real_objects_fit_their_budget_with_room_to_spare() {
        // Every corpus object of the fixtures, as the view and as a whole.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
                continue;
            };
            if !matches!(ext, "json" | "yaml" | "yml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let Ok(docs) = crate::yaml::documents(&text) else {
                continue;
            };
            for doc in docs.into_iter().filter(|d| d.is_object()) {
                let json = serde_json::to_string(&doc).unwrap();
                let limit = crate::budget::view_limit(json.len());
                for shape in [&POD, &DEPLOYMENT] {
                    let budget = Budget::new(limit);
                    parse(&json, shape, EVERYTHING, &budget)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    // At most half the allowance is used by a real object.
                    let used = budget.used();
                    assert!(used * 2 <= limit, "{}: {used} of {limit}", path.display());
                }
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} objects");
    }
}
