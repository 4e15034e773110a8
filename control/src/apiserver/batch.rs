//! Job and CronJob (`batch/v1`) strategy: upstream's defaults, the selector and labels a
//! Job gets unless it asks for `manualSelector`, and upstream's spec validation (a pod
//! template that restarts `Never` or `OnFailure`, a cron schedule that parses, a known
//! time zone).

use serde_json::{Value, json};

use super::{meta, status::Cause};
use crate::controllers::cronjob::schedule::Schedule;

/// The labels upstream's job strategy puts on a Job's pod template; the selector selects
/// the first (the uid is unique where a name may be reused).
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";

/// Upstream caps a CronJob's name so `<name>-<minutes since epoch>` stays a valid Job name.
const CRONJOB_NAME_MAX: usize = 52;

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if !obj.is_object() {
        *obj = json!({});
    }
    if obj.get(field).is_none_or(Value::is_null) {
        obj[field] = value;
    }
}

/// Upstream's SetDefaults_Job, on a Job's `spec` (also a CronJob's `jobTemplate.spec`).
pub fn default_job_spec(spec: &mut Value) {
    if spec["template"]["spec"].is_object() {
        super::strategy::default_pod_spec(&mut spec["template"]["spec"]);
    }
    if spec.get("completions").is_none_or(Value::is_null) && spec.get("parallelism").is_none_or(Value::is_null) {
        set_default(spec, "completions", json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    let per_index = spec.get("backoffLimitPerIndex").is_some_and(|v| !v.is_null());
    set_default(spec, "backoffLimit", json!(if per_index { i32::MAX } else { 6 }));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    let has_failure_policy = spec.get("podFailurePolicy").is_some_and(|v| !v.is_null());
    set_default(
        spec,
        "podReplacementPolicy",
        json!(if has_failure_policy {
            "Failed"
        } else {
            "TerminatingOrFailed"
        }),
    );
}

/// A created Job: defaults, and (unless `manualSelector`) the generated selector and
/// pod labels. Runs before the server fills in a `generateName`, so it names the Job
/// itself: the `job-name` label needs the final name.
pub fn default_job_on_create(obj: &mut Value) {
    default_job_spec(&mut obj["spec"]);
    if meta::name(obj).is_none()
        && let Some(prefix) = meta::str_field(obj, "generateName").filter(|p| !p.is_empty())
    {
        let name = format!("{prefix}{}", meta::random_suffix());
        meta::metadata_mut(obj).insert("name".into(), json!(name));
    }
    if obj["spec"]["manualSelector"] != true {
        generate_selector(obj);
    }
    // A Job starts with no status of its own: the controller writes it.
    obj["status"] = json!({});
}

/// Upstream's generateSelector: labels already set by the user stay (validation refuses a
/// conflict), the selector gains the controller uid.
fn generate_selector(obj: &mut Value) {
    let name = meta::name(obj).unwrap_or_default().to_owned();
    let uid = obj["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let template = &mut obj["spec"]["template"];
    set_default(template, "metadata", json!({}));
    set_default(&mut template["metadata"], "labels", json!({}));
    let labels = &mut template["metadata"]["labels"];
    for (key, value) in [
        (LEGACY_JOB_NAME_LABEL, &name),
        (JOB_NAME_LABEL, &name),
        (LEGACY_CONTROLLER_UID_LABEL, &uid),
        (CONTROLLER_UID_LABEL, &uid),
    ] {
        set_default(labels, key, json!(value));
    }
    let spec = &mut obj["spec"];
    set_default(spec, "selector", json!({}));
    set_default(&mut spec["selector"], "matchLabels", json!({}));
    set_default(&mut spec["selector"]["matchLabels"], CONTROLLER_UID_LABEL, json!(uid));
}

/// Upstream's SetDefaults_CronJob.
pub fn default_cronjob_on_create(obj: &mut Value) {
    let spec = &mut obj["spec"];
    set_default(spec, "concurrencyPolicy", json!("Allow"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "successfulJobsHistoryLimit", json!(3));
    set_default(spec, "failedJobsHistoryLimit", json!(1));
    set_default(spec, "jobTemplate", json!({}));
    set_default(&mut spec["jobTemplate"], "spec", json!({}));
    default_job_spec(&mut spec["jobTemplate"]["spec"]);
    obj["status"] = json!({});
}

/// An update may not move what identifies a Job's pods: its selector and (without
/// `manualSelector`) the generated labels. A write that leaves them out keeps them.
pub fn prepare_job_update(old: &Value, new: &mut Value) {
    if new["spec"].is_object() {
        default_job_spec(&mut new["spec"]);
        if new["spec"].get("selector").is_none_or(Value::is_null) {
            new["spec"]["selector"] = old["spec"]["selector"].clone();
        }
    }
}

pub fn prepare_cronjob_update(new: &mut Value) {
    if new["spec"].is_object() {
        let spec = &mut new["spec"];
        set_default(spec, "jobTemplate", json!({}));
        set_default(&mut spec["jobTemplate"], "spec", json!({}));
        default_job_spec(&mut spec["jobTemplate"]["spec"]);
    }
}

fn non_negative(spec: &Value, field: &str, at: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = spec[field].as_i64().filter(|n| *n < 0) {
        causes.push(Cause::invalid(
            format!("{at}.{field}"),
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        ));
    }
}

/// Upstream's ValidateJob (create) and the immutable fields of ValidateJobUpdate.
pub fn validate_job(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    validate_job_spec(&obj["spec"], "spec", causes);
    let spec = &obj["spec"];
    if spec["manualSelector"] != true {
        let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
        let labels = &spec["template"]["metadata"]["labels"];
        if labels[CONTROLLER_UID_LABEL].as_str().is_some_and(|v| v != uid) {
            causes.push(Cause::invalid(
                format!("spec.template.metadata.labels[{CONTROLLER_UID_LABEL}]"),
                format!(
                    "Invalid value: {:?}: must be '{uid}'",
                    labels[CONTROLLER_UID_LABEL].as_str().unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(old) = old {
        for field in ["selector", "completionMode"] {
            if old["spec"].get(field).is_some() && old["spec"][field] != spec[field] {
                causes.push(Cause::invalid(format!("spec.{field}"), "field is immutable"));
            }
        }
        let (old_template, new_template) = (&old["spec"]["template"], &spec["template"]);
        // Upstream allows a suspended Job's scheduling directives to change; we keep it simple
        // and allow what it always does: nothing.
        if old_template.is_object() && old_template != new_template {
            causes.push(Cause::invalid("spec.template", "Invalid value: field is immutable"));
        }
    }
}

/// A JobSpec at `at` (`spec` or a CronJob's `spec.jobTemplate.spec`).
fn validate_job_spec(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(spec, field, at, causes);
    }
    if spec["activeDeadlineSeconds"].as_i64() == Some(0) {
        causes.push(Cause::invalid(
            format!("{at}.activeDeadlineSeconds"),
            "Invalid value: 0: must be greater than 0",
        ));
    }
    let mode = spec["completionMode"].as_str().unwrap_or("NonIndexed");
    if !["NonIndexed", "Indexed"].contains(&mode) {
        causes.push(Cause::not_supported(
            format!("{at}.completionMode"),
            format!("Unsupported value: {mode:?}: supported values: \"NonIndexed\", \"Indexed\""),
        ));
    }
    if mode == "Indexed" && spec["completions"].as_i64().is_none() {
        causes.push(Cause {
            field: format!("{at}.completions"),
            reason: "FieldValueRequired",
            message: "Required value: when completion mode is Indexed".into(),
        });
    }
    super::strategy::validate_pod_spec(&spec["template"]["spec"], &format!("{at}.template.spec"), causes);
    let policy = spec["template"]["spec"]["restartPolicy"].as_str().unwrap_or_default();
    if policy != "Never" && policy != "OnFailure" {
        causes.push(Cause::not_supported(
            format!("{at}.template.spec.restartPolicy"),
            format!("Unsupported value: {policy:?}: supported values: \"OnFailure\", \"Never\""),
        ));
    }
    // A CronJob's template has no selector yet; a Job's always has one once defaulted.
    if at == "spec" {
        let selector = &spec["selector"];
        if !selector.is_object() {
            causes.push(Cause::required(format!("{at}.selector")));
        } else if let Some(match_labels) = selector["matchLabels"].as_object() {
            let labels = &spec["template"]["metadata"]["labels"];
            if match_labels.iter().any(|(k, v)| labels.get(k) != Some(v)) {
                causes.push(Cause::invalid(
                    format!("{at}.template.metadata.labels"),
                    "Invalid value: `selector` does not match template `labels`",
                ));
            }
        }
    }
}

/// Upstream's ValidateCronJobCreate/Update.
pub fn validate_cronjob(obj: &Value, causes: &mut Vec<Cause>) {
    let name = meta::name(obj).unwrap_or_default();
    if name.len() > CRONJOB_NAME_MAX {
        causes.push(Cause::invalid(
            "metadata.name",
            format!("Invalid value: {name:?}: must be no more than {CRONJOB_NAME_MAX} characters"),
        ));
    }
    let spec = &obj["spec"];
    match spec["schedule"].as_str() {
        None | Some("") => causes.push(Cause::required("spec.schedule")),
        Some(s) if s.contains("TZ") => causes.push(Cause::invalid(
            "spec.schedule",
            format!("Invalid value: {s:?}: cannot use TZ or CRON_TZ in schedule, use timeZone field instead"),
        )),
        Some(s) => {
            if let Err(e) = Schedule::parse(s) {
                causes.push(Cause::invalid("spec.schedule", format!("Invalid value: {s:?}: {e}")));
            }
        }
    }
    if let Some(tz) = spec["timeZone"].as_str()
        && let Err(reason) = check_time_zone(tz)
    {
        causes.push(Cause::invalid(
            "spec.timeZone",
            format!("Invalid value: {tz:?}: {reason}"),
        ));
    }
    let policy = spec["concurrencyPolicy"].as_str().unwrap_or("Allow");
    if !["Allow", "Forbid", "Replace"].contains(&policy) {
        causes.push(Cause::not_supported(
            "spec.concurrencyPolicy",
            format!("Unsupported value: {policy:?}: supported values: \"Allow\", \"Forbid\", \"Replace\""),
        ));
    }
    for field in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        non_negative(spec, field, "spec", causes);
    }
    validate_job_spec(&spec["jobTemplate"]["spec"], "spec.jobTemplate.spec", causes);
}

/// Upstream's validateTimeZone: an explicit IANA name that the time zone database knows.
fn check_time_zone(tz: &str) -> Result<(), String> {
    if tz.eq_ignore_ascii_case("local") {
        return Err("timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones".into());
    }
    if tz.is_empty() || tz.contains(char::is_whitespace) {
        return Err(format!("unknown time zone {tz}"));
    }
    jiff::tz::TimeZone::get(tz)
        .map(|_| ())
        .map_err(|_| format!("unknown time zone {tz}"))
}

/// Table cells, as upstream's printers fill `kubectl get jobs` and `kubectl get cronjobs`.
pub mod cells {
    use serde_json::{Value, json};

    fn has_condition(o: &Value, ty: &str) -> bool {
        o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == ty && c["status"] == "True")
    }

    pub fn job_status(o: &Value) -> Value {
        let status = if has_condition(o, "Complete") {
            "Complete"
        } else if has_condition(o, "Failed") {
            "Failed"
        } else if !o["metadata"]["deletionTimestamp"].is_null() {
            "Terminating"
        } else if has_condition(o, "Suspended") {
            "Suspended"
        } else if has_condition(o, "FailureTarget") {
            "FailureTarget"
        } else if has_condition(o, "SuccessCriteriaMet") {
            "SuccessCriteriaMet"
        } else {
            "Running"
        };
        json!(status)
    }

    pub fn job_completions(o: &Value) -> Value {
        let succeeded = o["status"]["succeeded"].as_i64().unwrap_or(0);
        let spec = &o["spec"];
        json!(match (spec["completions"].as_i64(), spec["parallelism"].as_i64()) {
            (Some(c), _) => format!("{succeeded}/{c}"),
            (None, Some(p)) if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        })
    }

    pub fn job_duration(o: &Value) -> Value {
        let time = |v: &Value| v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok());
        let Some(start) = time(&o["status"]["startTime"]) else {
            return json!("");
        };
        let end = time(&o["status"]["completionTime"]).unwrap_or_else(jiff::Timestamp::now);
        json!(human_duration(end.as_second() - start.as_second()))
    }

    pub fn cronjob_time_zone(o: &Value) -> Value {
        json!(o["spec"]["timeZone"].as_str().unwrap_or("<none>"))
    }

    pub fn cronjob_suspend(o: &Value) -> Value {
        json!(match o["spec"]["suspend"].as_bool() {
            Some(true) => "True",
            Some(false) => "False",
            None => "<unset>",
        })
    }

    pub fn cronjob_active(o: &Value) -> Value {
        json!(o["status"]["active"].as_array().map_or(0, Vec::len))
    }

    pub fn cronjob_last_schedule(o: &Value) -> Value {
        match o["status"]["lastScheduleTime"]
            .as_str()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        {
            Some(t) => json!(human_duration(jiff::Timestamp::now().as_second() - t.as_second())),
            None => json!("<none>"),
        }
    }

    /// A CronJob's template seen as a Job's, so the workload columns read it.
    pub fn cronjob_as_job(o: &Value) -> Value {
        json!({"spec": o["spec"]["jobTemplate"]["spec"]})
    }

    /// Upstream's `duration.HumanDuration`: two units where the first is small.
    pub fn human_duration(seconds: i64) -> String {
        if seconds < -1 {
            return "<invalid>".into();
        }
        let s = seconds.max(0);
        if s < 120 {
            return format!("{s}s");
        }
        let minutes = s / 60;
        if minutes < 10 {
            return match s % 60 {
                0 => format!("{minutes}m"),
                r => format!("{minutes}m{r}s"),
            };
        }
        if minutes < 180 {
            return format!("{minutes}m");
        }
        let hours = s / 3600;
        if hours < 8 {
            return match minutes % 60 {
                0 => format!("{hours}h"),
                m => format!("{hours}h{m}m"),
            };
        }
        if hours < 48 {
            return format!("{hours}h");
        }
        if hours < 24 * 8 {
            return match hours % 24 {
                0 => format!("{}d", hours / 24),
                h => format!("{}d{h}h", hours / 24),
            };
        }
        if hours < 24 * 365 * 2 {
            return format!("{}d", hours / 24);
        }
        if hours < 24 * 365 * 8 {
            return match (hours / 24) % 365 {
                0 => format!("{}y", hours / 24 / 365),
                d => format!("{}y{d}d", hours / 24 / 365),
            };
        }
        format!("{}y", hours / 24 / 365)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn columns_read_as_kubectl_prints_them() {
            let done = json!({"spec": {"completions": 3, "parallelism": 2}, "status": {"succeeded": 3,
                "startTime": "2024-01-01T00:00:00Z", "completionTime": "2024-01-01T00:02:05Z",
                "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}});
            assert_eq!(
                (job_status(&done), job_completions(&done), job_duration(&done)),
                (json!("Complete"), json!("3/3"), json!("2m5s"))
            );
            let queue = json!({"spec": {"parallelism": 4}, "status": {}});
            assert_eq!(
                (job_status(&queue), job_completions(&queue), job_duration(&queue)),
                (json!("Running"), json!("0/1 of 4"), json!(""))
            );
            assert_eq!(human_duration(8 * 3600 + 5), "8h");
            assert_eq!(human_duration(3 * 86400 + 7200), "3d2h");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::{resources::find, strategy};

    fn job(spec: Value) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi", "uid": "u-1"}, "spec": spec})
    }

    fn fields(err: crate::apiserver::status::ApiError) -> Vec<String> {
        err.details
            .map(|d| d.causes.into_iter().map(|c| c.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn jobs_get_upstreams_defaults_selector_and_labels() {
        let rt = find("batch", "v1", "jobs").expect("served");
        let mut j =
            job(json!({"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}));
        strategy::default_on_create(rt, &mut j);
        let spec = &j["spec"];
        assert_eq!(
            (
                &spec["completions"],
                &spec["parallelism"],
                &spec["backoffLimit"],
                &spec["completionMode"]
            ),
            (&json!(1), &json!(1), &json!(6), &json!("NonIndexed"))
        );
        assert_eq!(spec["selector"], json!({"matchLabels": {CONTROLLER_UID_LABEL: "u-1"}}));
        let labels = &spec["template"]["metadata"]["labels"];
        assert_eq!(
            (&labels["job-name"], &labels[JOB_NAME_LABEL], &labels["controller-uid"]),
            (&json!("pi"), &json!("pi"), &json!("u-1"))
        );
        strategy::validate(rt, &j, None).expect("valid");
        // Parallelism alone leaves completions unset (a work queue).
        let mut queue = job(json!({"parallelism": 3, "template": {"spec": {"restartPolicy": "Never"}}}));
        strategy::default_on_create(rt, &mut queue);
        assert!(queue["spec"]["completions"].is_null());
    }

    #[test]
    fn a_job_that_restarts_always_is_refused_naming_the_field() {
        let rt = find("batch", "v1", "jobs").expect("served");
        let mut j = job(json!({"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}));
        strategy::default_on_create(rt, &mut j);
        let err = strategy::validate(rt, &j, None).expect_err("Always");
        assert_eq!(err.code, 422);
        assert_eq!(fields(err), ["spec.template.spec.restartPolicy"]);
        let mut indexed = job(
            json!({"parallelism": 2, "completionMode": "Indexed", "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}),
        );
        strategy::default_on_create(rt, &mut indexed);
        assert_eq!(
            fields(strategy::validate(rt, &indexed, None).expect_err("no completions")),
            ["spec.completions"]
        );
    }

    #[test]
    fn a_manual_selector_is_kept_and_must_match() {
        let rt = find("batch", "v1", "jobs").expect("served");
        let mut j = job(json!({"manualSelector": true, "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "c"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}));
        strategy::default_on_create(rt, &mut j);
        assert_eq!(j["spec"]["selector"], json!({"matchLabels": {"a": "b"}}));
        assert_eq!(
            fields(strategy::validate(rt, &j, None).expect_err("mismatch")),
            ["spec.template.metadata.labels"]
        );
    }

    #[test]
    fn cronjobs_default_and_check_schedule_and_time_zone() {
        let rt = find("batch", "v1", "cronjobs").expect("served");
        let template = json!({"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "i"}]}}}});
        let mut cj =
            json!({"metadata": {"name": "tick"}, "spec": {"schedule": "*/5 * * * *", "jobTemplate": template}});
        strategy::default_on_create(rt, &mut cj);
        assert_eq!(
            (
                &cj["spec"]["concurrencyPolicy"],
                &cj["spec"]["suspend"],
                &cj["spec"]["successfulJobsHistoryLimit"],
                &cj["spec"]["failedJobsHistoryLimit"]
            ),
            (&json!("Allow"), &json!(false), &json!(3), &json!(1))
        );
        assert_eq!(cj["spec"]["jobTemplate"]["spec"]["backoffLimit"], 6);
        strategy::validate(rt, &cj, None).expect("valid");
        let mut bad = cj.clone();
        bad["spec"]["schedule"] = json!("61 * * * *");
        bad["spec"]["timeZone"] = json!("Mars/Olympus");
        bad["spec"]["concurrencyPolicy"] = json!("Sometimes");
        let err = strategy::validate(rt, &bad, None).expect_err("invalid");
        assert_eq!(err.code, 422);
        assert_eq!(
            fields(err),
            ["spec.schedule", "spec.timeZone", "spec.concurrencyPolicy"]
        );
        let mut zoned = cj.clone();
        zoned["spec"]["timeZone"] = json!("Europe/Berlin");
        strategy::validate(rt, &zoned, None).expect("a real zone");
        zoned["spec"]["schedule"] = json!("CRON_TZ=UTC 0 * * * *");
        assert_eq!(
            fields(strategy::validate(rt, &zoned, None).expect_err("TZ")),
            ["spec.schedule"]
        );
    }
}
