//! Sets of field paths, as `metadata.managedFields` records them: structured-merge-diff's
//! `fieldpath.Set` and its `FieldsV1` encoding.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// One step of a path, held in its FieldsV1 spelling: `f:<name>` (a field),
/// `k:{"name":"x"}` (the item of an associative list with these key values),
/// `v:"x"` (the item of a set), `i:3` (an item by position). Holding the spelling keeps
/// paths ordered and comparable without ordering JSON values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element(String);

impl Element {
    pub fn field(name: &str) -> Self {
        Self(format!("f:{name}"))
    }

    /// `keys` in any order: the spelling sorts them by name, as Kubernetes does.
    pub fn key(keys: &[(&str, &Value)]) -> Self {
        let map: Map<String, Value> = keys.iter().map(|(k, v)| ((*k).to_owned(), (*v).clone())).collect();
        Self(format!("k:{}", Value::Object(map)))
    }

    pub fn value(v: &Value) -> Self {
        Self(format!("v:{v}"))
    }

    pub fn index(i: usize) -> Self {
        Self(format!("i:{i}"))
    }

    /// Checks a spelling read from a client's `fieldsV1`.
    fn parse(s: &str) -> Option<Self> {
        let ok = match s.split_at_checked(2)? {
            ("f:", _) => true,
            ("k:", json) => serde_json::from_str::<Value>(json).is_ok_and(|v| v.is_object()),
            ("v:", json) => serde_json::from_str::<Value>(json).is_ok(),
            ("i:", n) => n.parse::<usize>().is_ok(),
            _ => false,
        };
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn field_name(&self) -> Option<&str> {
        self.0.strip_prefix("f:")
    }

    pub fn is_field(&self) -> bool {
        self.0.starts_with("f:")
    }

    /// As upstream prints it in conflicts: `.name`, `[name="x",protocol="TCP"]`, `[="x"]`, `[3]`.
    fn display(&self) -> String {
        let (tag, rest) = self.0.split_at(2);
        match tag {
            "f:" => format!(".{rest}"),
            "k:" => match serde_json::from_str::<Map<String, Value>>(rest) {
                Ok(keys) => {
                    let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("[{}]", parts.join(","))
                }
                Err(_) => format!("[{rest}]"),
            },
            "v:" => format!("[={rest}]"),
            _ => format!("[{rest}]"),
        }
    }
}

pub type Path = Vec<Element>;

/// `.spec.template.spec.containers[name="web"].image`
pub fn path_string(path: &[Element]) -> String {
    path.iter().map(Element::display).collect()
}

/// The paths a manager owns: leaves (scalars, empty or atomic objects and lists) and the
/// items of lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<Path>);

impl FieldSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, path: Path) {
        self.0.insert(path);
    }

    pub fn contains(&self, path: &[Element]) -> bool {
        self.0.contains(path)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Path> {
        self.0.iter()
    }

    pub fn retain(&mut self, keep: impl FnMut(&Path) -> bool) {
        self.0.retain(keep);
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.union(&other.0).cloned().collect())
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&other.0).cloned().collect())
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.intersection(&other.0).cloned().collect())
    }

    /// Whether `path` or anything below it is in the set.
    pub fn covers(&self, path: &[Element]) -> bool {
        self.0
            .range::<[Element], _>((std::ops::Bound::Included(path), std::ops::Bound::Unbounded))
            .next()
            .is_some_and(|p| p.starts_with(path))
    }

    /// The set with every field (`f:`) that leads to one of its paths added: the parent
    /// objects an applier implicitly asked for (upstream's `EnsureNamedFieldsAreMembers`).
    pub fn with_parent_fields(&self) -> FieldSet {
        let mut out = self.clone();
        for path in &self.0 {
            for end in 1..path.len() {
                if path[end - 1].is_field() {
                    out.0.insert(path[..end].to_vec());
                }
            }
        }
        out
    }

    /// The `fieldsV1` object: one member per step; `{}` marks an owned path, and `".": {}`
    /// one that is owned and also has owned paths below it.
    pub fn to_fields_v1(&self) -> Value {
        #[derive(Default)]
        struct Node<'a> {
            member: bool,
            children: BTreeMap<&'a str, Node<'a>>,
        }
        fn render(node: &Node<'_>) -> Value {
            let mut m = Map::new();
            if node.member && !node.children.is_empty() {
                m.insert(".".into(), json!({}));
            }
            for (k, child) in &node.children {
                m.insert((*k).to_owned(), render(child));
            }
            Value::Object(m)
        }
        let mut root = Node::default();
        for path in &self.0 {
            let mut node = &mut root;
            for e in path {
                node = node.children.entry(e.as_str()).or_default();
            }
            node.member = true;
        }
        render(&root)
    }

    /// Reads a `fieldsV1` object; the error says what is malformed.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
        fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) -> Result<(), String> {
            let Value::Object(m) = v else {
                return Err(format!("{}: expected an object", path_string(path)));
            };
            for (k, child) in m {
                if k == "." {
                    continue;
                }
                let e =
                    Element::parse(k).ok_or_else(|| format!("{}: invalid path element {k:?}", path_string(path)))?;
                path.push(e);
                let Value::Object(cm) = child else {
                    return Err(format!("{}: expected an object", path_string(path)));
                };
                if cm.is_empty() || cm.contains_key(".") {
                    out.insert(path.clone());
                }
                walk(child, path, out)?;
                path.pop();
            }
            Ok(())
        }
        let mut out = FieldSet::new();
        walk(v, &mut Vec::new(), &mut out)?;
        Ok(out)
    }
}

impl FromIterator<Path> for FieldSet {
    fn from_iter<T: IntoIterator<Item = Path>>(iter: T) -> Self {
        FieldSet(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(parts: &[&str]) -> Path {
        parts.iter().map(|s| Element::parse(s).unwrap()).collect()
    }

    #[test]
    fn encodes_members_and_parents_as_upstream() {
        let set: FieldSet = [
            p(&["f:spec", "f:replicas"]),
            p(&["f:spec", "f:template", "f:spec", "f:containers", r#"k:{"name":"web"}"#]),
            p(&[
                "f:spec",
                "f:template",
                "f:spec",
                "f:containers",
                r#"k:{"name":"web"}"#,
                "f:image",
            ]),
            p(&["f:metadata", "f:finalizers", r#"v:"a/b""#]),
        ]
        .into_iter()
        .collect();
        let v = set.to_fields_v1();
        assert_eq!(
            v,
            json!({
                "f:metadata": {"f:finalizers": {"v:\"a/b\"": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}}}}}
                }
            })
        );
        assert_eq!(FieldSet::from_fields_v1(&v).unwrap(), set);
    }

    #[test]
    fn keys_are_sorted_and_printed_like_upstream() {
        let e = Element::key(&[("protocol", &json!("TCP")), ("containerPort", &json!(80))]);
        assert_eq!(e.as_str(), r#"k:{"containerPort":80,"protocol":"TCP"}"#);
        let path = vec![
            Element::field("spec"),
            Element::field("ports"),
            e,
            Element::field("name"),
        ];
        assert_eq!(
            path_string(&path),
            r#".spec.ports[containerPort=80,protocol="TCP"].name"#
        );
        assert_eq!(
            path_string(&[Element::value(&json!("x")), Element::index(2)]),
            r#"[="x"][2]"#
        );
    }

    #[test]
    fn malformed_fields_v1_is_refused() {
        assert!(FieldSet::from_fields_v1(&json!({"spec": {}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"f:spec": 1})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"k:notjson": {}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!([])).is_err());
        assert!(FieldSet::from_fields_v1(&json!({})).unwrap().is_empty());
    }

    #[test]
    fn set_operations_and_coverage() {
        let a: FieldSet = [p(&["f:spec", "f:replicas"]), p(&["f:spec", "f:paused"])]
            .into_iter()
            .collect();
        let b: FieldSet = [p(&["f:spec", "f:paused"]), p(&["f:metadata", "f:labels", "f:x"])]
            .into_iter()
            .collect();
        assert_eq!(a.intersection(&b).len(), 1);
        assert_eq!(a.union(&b).len(), 3);
        assert_eq!(a.difference(&b).iter().next(), Some(&p(&["f:spec", "f:replicas"])));
        assert!(a.covers(&p(&["f:spec"])));
        assert!(!a.covers(&p(&["f:status"])));
        assert!(!a.covers(&p(&["f:spec", "f:replicas", "f:x"])));
        let parents = b.with_parent_fields();
        assert!(parents.contains(&p(&["f:metadata", "f:labels"])));
        assert!(parents.contains(&p(&["f:metadata"])));
    }
}
