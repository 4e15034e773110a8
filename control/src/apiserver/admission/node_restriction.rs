//! NodeRestriction, the part the authorizer cannot judge without the body: a node may
//! register only its own Node and create only its own Lease. (What a node may read, and
//! which tokens it may ask for, is the node authorizer's and `sa_token`'s.)

use serde_json::Value;

use super::{Attributes, Operation};
use crate::apiserver::{App, status::ApiError};

pub async fn validate(_app: &App, attrs: &Attributes<'_>, obj: &Value, _old: Option<&Value>) -> Result<(), ApiError> {
    if attrs.operation != Operation::Create || attrs.req.subresource.is_some() {
        return Ok(());
    }
    crate::apiserver::authz::admit_create(attrs.user, attrs.req, obj)
}
