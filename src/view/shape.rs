//! Which members of a JSON value to build. Each policy declares the members
//! it reads as a [`Shape`] (with [`Shape::at`]); the pipeline merges the
//! declarations of its policies into one shape per kind ([`Shape::merge`]).

use std::borrow::Cow;

/// Which members of a JSON value to build.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// The whole subtree.
    All,
    /// Only these members of an object, each with its own shape; the other
    /// members are skipped unbuilt.
    Members(Vec<(Cow<'static, str>, Shape)>),
    /// Every element of an array, each with this shape.
    Each(Box<Shape>),
    /// The whole subtree's JSON text, kept beside the view
    /// ([`Parsed::text`](super::Parsed::text)), and this shape of it in the
    /// view. At most one per shape, and not inside [`Shape::Each`].
    Text(Box<Shape>),
    /// An object of annotations: only the keys in
    /// [`Keys`](super::Keys) are built.
    Annotations,
    /// A list of environment variables: only those whose `name` is in
    /// [`Keys`](super::Keys) are built (their `name` and `value`); the others
    /// become `null`, so that every variable keeps its index in the patch's
    /// paths.
    EnvVars,
}

use Shape::{All, Annotations, Each, EnvVars, Members, Text};

impl Shape {
    /// An object with nothing built: the shape to merge declarations into.
    pub fn empty() -> Shape {
        Members(Vec::new())
    }

    /// `leaf` at `path` in an object: `["spec", "containers", "*", "env"]`
    /// with `EnvVars` reads every container's `env`. A `*` segment is every
    /// element of an array.
    pub fn at(path: &[&'static str], leaf: Shape) -> Shape {
        path.iter().rev().fold(leaf, |inner, seg| match *seg {
            "*" => Each(Box::new(inner)),
            name => Members(vec![(Cow::Borrowed(name), inner)]),
        })
    }

    /// What `self` or `other` builds: members are joined, the same member's
    /// shapes merged. Two shapes that cannot be told apart by one parse (an
    /// object read member by member and the same object read as
    /// annotations) give [`Shape::All`], which builds what either would.
    pub fn merge(self, other: Shape) -> Shape {
        match (self, other) {
            (All, _) | (_, All) => All,
            (Members(mut a), Members(b)) => {
                for (name, shape) in b {
                    match a.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, mine)) => {
                            let taken = std::mem::replace(mine, All);
                            *mine = taken.merge(shape);
                        }
                        None => a.push((name, shape)),
                    }
                }
                Members(a)
            }
            (Each(a), Each(b)) => Each(Box::new(a.merge(*b))),
            (Text(a), Text(b)) => Text(Box::new(a.merge(*b))),
            (Text(a), b) | (b, Text(a)) => Text(Box::new(a.merge(b))),
            (Annotations, Annotations) => Annotations,
            (EnvVars, EnvVars) => EnvVars,
            _ => All,
        }
    }

    /// Whether a [`Shape::Text`] is in this shape.
    pub fn has_text(&self) -> bool {
        match self {
            All | Each(_) | Annotations | EnvVars => false,
            Text(_) => true,
            Members(members) => members.iter().any(|(_, shape)| shape.has_text()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: Vec<(&'static str, Shape)>) -> Shape {
        Members(
            list.into_iter()
                .map(|(n, s)| (Cow::Borrowed(n), s))
                .collect(),
        )
    }

    #[test]
    fn paths_build_nested_members_and_star_is_every_element() {
        assert_eq!(
            Shape::at(&["spec", "containers", "*", "env"], EnvVars),
            members(vec![(
                "spec",
                members(vec![(
                    "containers",
                    Each(Box::new(members(vec![("env", EnvVars)])))
                )])
            )])
        );
    }

    #[test]
    fn merging_joins_members_and_keeps_the_larger_shape() {
        let a = Shape::at(&["spec", "dnsConfig"], All)
            .merge(Shape::at(&["spec", "containers", "*", "name"], All));
        let b = Shape::at(&["spec", "containers", "*", "env"], EnvVars)
            .merge(Shape::at(&["spec", "dnsConfig", "options"], All));
        let merged = a.merge(b);
        assert_eq!(
            merged,
            members(vec![(
                "spec",
                members(vec![
                    ("dnsConfig", All),
                    (
                        "containers",
                        Each(Box::new(members(vec![("name", All), ("env", EnvVars)])))
                    ),
                ])
            )])
        );
        // Text keeps the text and merges the view of it.
        let t = Shape::at(&["spec", "template"], Text(Box::new(Shape::empty())))
            .merge(Shape::at(&["spec", "template", "metadata"], All));
        assert_eq!(
            t,
            members(vec![(
                "spec",
                members(vec![(
                    "template",
                    Text(Box::new(members(vec![("metadata", All)])))
                )])
            )])
        );
        assert!(t.has_text());
        // Conflicting readings build everything.
        assert_eq!(Annotations.merge(EnvVars), All);
        assert_eq!(Shape::empty().merge(Annotations), All);
    }
}
