//! Which objects a list or watch returns: the request's label and field selectors.

use serde_json::Value;

use super::{
    resources::ResourceType,
    selector::{self, FieldSelector, LabelSelector},
    status::ApiError,
};

#[derive(Clone, Debug, Default)]
pub struct ObjectFilter {
    kind: &'static str,
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
}

impl ObjectFilter {
    /// Parses `labelSelector` and `fieldSelector`; a malformed one, or a field the type does
    /// not support, is a 400 that names it.
    pub fn from_query(rt: &ResourceType, labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        let labels = labels
            .map(LabelSelector::parse)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = fields
            .map(|f| {
                let parsed = FieldSelector::parse(f)?;
                parsed.validate_for(rt.kind)?;
                Ok(parsed)
            })
            .transpose()
            .map_err(|e: selector::SelectorError| ApiError::bad_request(e.to_string()))?;
        Ok(Self {
            kind: rt.kind,
            labels,
            fields,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(l) = &self.labels
            && !l.matches_object(obj)
        {
            return false;
        }
        if let Some(f) = &self.fields {
            let fields = selector::object_fields(self.kind, obj);
            if !f.matches(&fields) {
                return false;
            }
        }
        true
    }
}
