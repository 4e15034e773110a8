//! Table output for custom objects: the Name column, then the version's
//! `additionalPrinterColumns` (or Age when it has none), as upstream's table convertor.

use serde_json::{Value, json};

use super::CustomType;
use crate::apiserver::table;

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `[n]`, and the filter
/// `[?(@.field=="value")]` (the first match). None when the path finds nothing.
pub fn eval<'a>(path: &str, obj: &'a Value) -> Option<&'a Value> {
    let mut cur = obj;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            if !key.is_empty() {
                cur = cur.get(key)?;
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur.as_array()?.iter().find(|item| {
                    eval(&format!(".{}", field.trim()), item).is_some_and(|v| match v {
                        Value::String(s) => s == want,
                        other => serde_json::from_str::<Value>(want).ok().as_ref() == Some(other),
                    })
                })?;
            } else {
                cur = cur.get(inner.parse::<usize>().ok()?)?;
            }
        } else {
            return None;
        }
    }
    Some(cur)
}

fn cell(ty: &str, v: Option<&Value>) -> Value {
    let Some(v) = v else {
        return Value::Null;
    };
    match ty {
        "date" => table::age(&json!({"metadata": {"creationTimestamp": v}})),
        "integer" | "number" | "boolean" => v.clone(),
        _ => match v {
            Value::String(_) => v.clone(),
            other => json!(other.to_string()),
        },
    }
}

/// The column definitions of a custom type's Table and the (type, JSONPath) each column after
/// Name reads.
pub fn columns(ct: &CustomType) -> (Vec<Value>, Vec<(String, String)>) {
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    let mut paths: Vec<(String, String)> = Vec::new();
    if ct.columns.is_empty() {
        defs.push(json!({"name": "Age", "type": "date", "format": "", "description": "", "priority": 0}));
        paths.push(("date".into(), ".metadata.creationTimestamp".into()));
    }
    for c in &ct.columns {
        defs.push(json!({"name": c.name, "type": c.ty, "format": c.format, "description": c.description, "priority": c.priority}));
        paths.push((c.ty.clone(), c.json_path.clone()));
    }
    (defs, paths)
}

/// One object's cells for the columns `columns` returned.
pub fn cells(paths: &[(String, String)], o: &Value) -> Vec<Value> {
    let mut cells = vec![o["metadata"]["name"].clone()];
    cells.extend(paths.iter().map(|(ty, p)| cell(ty, eval(p, o))));
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_of_printer_columns() {
        let o = json!({"spec": {"replicas": 3, "image": "nginx"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"}]}});
        assert_eq!(eval(".spec.replicas", &o), Some(&json!(3)));
        assert_eq!(eval(".status.conditions[1].type", &o), Some(&json!("Synced")));
        assert_eq!(
            eval(r#".status.conditions[?(@.type=="Synced")].status"#, &o),
            Some(&json!("False"))
        );
        assert_eq!(eval(".spec.missing", &o), None);
    }
}
