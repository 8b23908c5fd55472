//! `dns`: `ndots:2` and `single-request-reopen` in every pod's dnsConfig.
//!
//! With the Kubernetes default of `ndots:5`, a lookup of `api.example.com`
//! walks the whole search path (`<ns>.svc.cluster.local`, `svc.cluster.local`,
//! `cluster.local`, ...) before trying the name as given: up to 80% of the
//! queries CoreDNS answers are such wasted NXDOMAINs. `ndots:2` still resolves
//! `svc` and `svc.ns` short names through the search path.
//! `single-request-reopen` sends the A and AAAA queries from different sockets,
//! which avoids the conntrack race that drops one of them and costs a 5 s
//! resolver timeout.
//!
//! An ndots the pod already sets is respected unless `override: true`. Windows
//! pods are skipped: their resolver ignores these options.

use super::apiserver::{self, InApiserver};
use super::{is_windows, windows_reads, Context, Definition, Kind, Policy, Reads};
use crate::patch::{lookup, Edit, Mutation};
use crate::view::Shape;
use kube::core::admission::Operation;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The policy's name in `calmplane.dev/skip`, metrics and changes.
pub const NAME: &str = "dns";

/// The `dns` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// The `ndots` option written into pods: low enough that external names
    /// skip the search path, high enough that `svc.ns` still uses it.
    #[schemars(range(min = 1, max = 15))]
    pub ndots: u8,
    /// Replace an ndots the pod sets itself.
    pub r#override: bool,
    /// Whether to add `single-request-reopen`, against the conntrack race
    /// that loses an A or AAAA reply.
    pub single_request_reopen: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ndots: 2,
            r#override: false,
            single_request_reopen: true,
        }
    }
}

impl super::Settings for Settings {
    fn check(&self) -> Result<(), (&'static str, String)> {
        if !(1..=15).contains(&self.ndots) {
            return Err((
                "ndots",
                format!(
                    "{} is out of range 1..=15 (the resolver caps ndots at 15)",
                    self.ndots
                ),
            ));
        }
        Ok(())
    }
}

/// The policy.
pub struct Dns {
    cfg: Settings,
    /// `cfg.ndots` as the string dnsConfig wants, formatted once, not per pod.
    ndots: String,
}

impl Definition for Dns {
    const NAME: &'static str = NAME;
    const SECTION: &'static str = "dns";
    const COUNTS: &'static str = "pods given ndots and single-request-reopen";
    type Settings = Settings;

    fn new(cfg: Settings) -> Self {
        let ndots = cfg.ndots.to_string();
        Dns { cfg, ndots }
    }
}

impl Dns {
    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.cfg
    }

    fn message(&self, option: &Value) -> String {
        match option["name"].as_str() {
            Some("ndots") => format!(
                "ndots:{0}: names with {0} or more dots skip the search path",
                self.ndots
            ),
            _ => "single-request-reopen: A and AAAA queries on separate sockets (avoids the 5 s conntrack race)"
                .to_string(),
        }
    }
}

impl Policy for Dns {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, kind: Kind, operation: &Operation) -> bool {
        kind == Kind::Pod && *operation == Operation::Create
    }

    fn reads(&self, reads: &mut Reads) {
        windows_reads(reads);
        reads.shape(Kind::Pod, Shape::at(&["spec", "dnsConfig"], Shape::All));
    }

    /// A `JSONPatch`: `options` is an atomic list, which an
    /// `ApplyConfiguration` may not write. The same edits as [`Policy::apply`],
    /// in the same order: the ndots value replaced (with `override`), then
    /// the missing options appended, or the whole list (or `dnsConfig`)
    /// added when there is none.
    fn in_apiserver(&self) -> InApiserver {
        let ndots = &self.ndots;
        // `Object` and `JSONPatch` exist only in the mutation's expression,
        // not in variables: the variables decide, the expression builds.
        let mut append = vec![format!(
            "(variables.addNdots ? [Object.spec.dnsConfig.options{{name: 'ndots', value: '{ndots}'}}] : [])"
        )];
        let mut variables = vec![
            (
                "opts",
                "has(object.spec.dnsConfig) && has(object.spec.dnsConfig.options) ? \
                 object.spec.dnsConfig.options : []"
                    .to_string(),
            ),
            (
                "ndotsAt",
                "variables.opts.map(o, o.?name.orValue('')).indexOf('ndots')".to_string(),
            ),
            ("addNdots", "variables.ndotsAt < 0".to_string()),
        ];
        let mut adds = "variables.addNdots".to_string();
        if self.cfg.single_request_reopen {
            variables.push((
                "addReopen",
                "!variables.opts.exists(o, o.?name.orValue('') == 'single-request-reopen')"
                    .to_string(),
            ));
            append.push(
                "(variables.addReopen ? [Object.spec.dnsConfig.options{name: 'single-request-reopen'}] : [])"
                    .to_string(),
            );
            adds.push_str(" || variables.addReopen");
        }
        let append = append.join(" + ");
        let append_ops = format!(
            "(!({adds}) ? [] : \
             !has(object.spec.dnsConfig) ? [JSONPatch{{op: 'add', path: '/spec/dnsConfig', \
             value: Object.spec.dnsConfig{{options: {append}}}}}] : \
             !has(object.spec.dnsConfig.options) ? [JSONPatch{{op: 'add', path: '/spec/dnsConfig/options', \
             value: {append}}}] : \
             ({append}).map(o, JSONPatch{{op: 'add', path: '/spec/dnsConfig/options/-', value: o}}))"
        );
        let patch = if self.cfg.r#override {
            // An ndots of another value is replaced in place.
            variables.push((
                "replaceNdots",
                format!(
                    "variables.ndotsAt >= 0 && variables.opts[variables.ndotsAt].?value.orValue('') != '{ndots}'"
                ),
            ));
            format!(
                "(variables.replaceNdots ? [JSONPatch{{op: 'add', \
                 path: '/spec/dnsConfig/options/' + string(variables.ndotsAt) + '/value', value: '{ndots}'}}] : []) + \
                 {append_ops}"
            )
        } else {
            append_ops
        };
        InApiserver::Runs(apiserver::Mutation {
            kind: Kind::Pod,
            operations: &["CREATE"],
            conditions: vec![("not-windows", format!("!({})", apiserver::windows()))],
            variables,
            patch: apiserver::Patch::JsonPatch(patch),
        })
    }

    fn apply(&self, _ctx: &Context<'_>, m: &mut Mutation) {
        if is_windows(m.doc()) {
            return;
        }
        let options_path = ["spec", "dnsConfig", "options"];
        let (options, missing): (&[Value], bool) = match lookup(m.doc(), &options_path) {
            Some(Value::Array(items)) => (items, false),
            Some(Value::Null) | None => (&[], true),
            Some(_) => {
                m.warn("calmplane dns: skipped, spec.dnsConfig.options is not a list");
                return;
            }
        };
        let position = |name: &str| {
            options
                .iter()
                .position(|o| o.get("name").and_then(Value::as_str) == Some(name))
        };
        let ndots_at = position("ndots");
        let ndots_value = ndots_at.and_then(|i| options[i].get("value")).cloned();
        let has_reopen = position("single-request-reopen").is_some();

        // Decide first, then edit: `options` borrows the document.
        let mut append = Vec::new();
        let replace_ndots = match ndots_at {
            None => {
                append.push(json!({"name": "ndots", "value": self.ndots}));
                None
            }
            Some(i)
                if self.cfg.r#override
                    && ndots_value.as_ref().and_then(Value::as_str) != Some(&self.ndots) =>
            {
                Some(i)
            }
            Some(_) => None,
        };
        if self.cfg.single_request_reopen && !has_reopen {
            append.push(json!({"name": "single-request-reopen"}));
        }

        if let Some(i) = replace_ndots {
            let index = i.to_string();
            let was = ndots_value.unwrap_or(Value::Null);
            m.set(
                &["spec", "dnsConfig", "options", &index, "value"],
                Value::String(self.ndots.clone()),
                format!("ndots {was} -> {} (override: true)", self.ndots),
            );
        }
        if append.is_empty() {
            return;
        }
        if missing {
            // One `add` for the whole list instead of one per option.
            let text = append
                .iter()
                .map(|o| self.message(o))
                .collect::<Vec<_>>()
                .join("; ");
            m.set(&options_path, Value::Array(append), text);
            return;
        }
        for option in append {
            let text = self.message(&option);
            if m.append(&options_path, option, text) == Edit::Refused {
                return;
            }
        }
    }
}
