//! What a CronJob needs now, from its object and the Jobs it owns (pure), as upstream's
//! cronjob controller v2 decides it: the active list and last success time brought up to
//! date, the one Job due (if any, within `startingDeadlineSeconds`, by
//! `concurrencyPolicy`), the Jobs to delete (Replace, history limits), and when to look
//! again.

use std::sync::Arc;

use jiff::{Timestamp, tz::TimeZone};
use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobStatus, Job},
        core::v1::ObjectReference,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};

use super::schedule::Schedule;
use crate::controllers::workload::controller_ref;

/// Upstream's annotation with the time a Job was scheduled for, in the CronJob's zone.
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Upstream gives up counting missed start times past this and says so.
const TOO_MANY_MISSED: usize = 100;

#[derive(Debug, Default)]
pub struct Plan {
    /// A Job to create for the schedule time just passed.
    pub create: Option<Job>,
    /// Jobs to delete (background propagation), with why.
    pub delete: Vec<(String, &'static str)>,
    pub status: CronJobStatus,
    /// Events to record: (type, reason, message).
    pub events: Vec<(&'static str, &'static str, String)>,
    /// Seconds until the next schedule time, when there is one.
    pub requeue_after: Option<f64>,
}

fn condition_true(job: &Job, ty: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == ty && c.status == "True"))
}

/// Complete or Failed (upstream's IsJobFinished).
pub fn finished(job: &Job) -> Option<&'static str> {
    if condition_true(job, "Complete") {
        Some("Complete")
    } else if condition_true(job, "Failed") {
        Some("Failed")
    } else {
        None
    }
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The zone the schedule runs in: `spec.timeZone`, else UTC (the controller manager's
/// zone upstream; ours is UTC). None for a zone the database does not know.
pub fn time_zone(cj: &CronJob) -> Option<TimeZone> {
    match cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()) {
        None => Some(TimeZone::UTC),
        Some(name) => TimeZone::get(name).ok(),
    }
}

/// The newest schedule time in (`earliest`, `now`] and how many there were (capped just
/// past [`TOO_MANY_MISSED`]).
fn most_recent(schedule: &Schedule, tz: &TimeZone, earliest: Timestamp, now: Timestamp) -> (Option<Timestamp>, usize) {
    let mut last = None;
    let mut count = 0;
    let mut t = earliest;
    while let Some(next) = schedule.next_after(t, tz) {
        if next > now {
            break;
        }
        last = Some(next);
        count += 1;
        if count > TOO_MANY_MISSED {
            // Jump to the end: only the newest one is ever started.
            let mut probe = now
                .checked_sub(jiff::SignedDuration::from_hours(24 * 366))
                .unwrap_or(next)
                .max(next);
            while let Some(n) = schedule.next_after(probe, tz) {
                if n > now {
                    break;
                }
                last = Some(n);
                probe = n;
            }
            break;
        }
        t = next;
    }
    (last, count)
}

/// `<cronjob>-<minutes since the epoch>`: one name per schedule time, so a Job is never
/// created twice for the same time.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// The Job for `scheduled`, from the template, controlled by the CronJob.
pub fn job_for(cj: &CronJob, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let template = cj.spec.as_ref().map(|s| s.job_template.clone()).unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let name = cj.metadata.name.clone().unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP_ANNOTATION.into(),
        scheduled
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, scheduled)),
            namespace: cj.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref("batch/v1", "CronJob", &cj.metadata)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Plans one CronJob. `jobs` are the Jobs of its namespace it controls.
pub fn plan(cj: &CronJob, jobs: &[Arc<Job>], now: Timestamp) -> Plan {
    let mut out = Plan::default();
    let spec = cj.spec.clone().unwrap_or_default();
    let old = cj.status.clone().unwrap_or_default();
    let mut status = CronJobStatus {
        active: None,
        last_schedule_time: old.last_schedule_time.clone(),
        last_successful_time: old.last_successful_time.clone(),
    };

    // The active list is what the cache shows running; finished Jobs leave it, a
    // successful one moving lastSuccessfulTime.
    let mut active: Vec<ObjectReference> = Vec::new();
    for job in jobs {
        match finished(job) {
            None => active.push(reference(job)),
            Some("Complete") => {
                let done = job.status.as_ref().and_then(|s| s.completion_time.clone());
                if let Some(done) = done
                    && status.last_successful_time.as_ref().is_none_or(|t| t.0 < done.0)
                {
                    status.last_successful_time = Some(done);
                }
            }
            Some(_) => {}
        }
    }
    // A Job listed as active that the cache does not show yet (just created) stays.
    for r in old.active.iter().flatten() {
        let known = jobs
            .iter()
            .any(|j| j.metadata.uid == r.uid || j.metadata.name == r.name);
        if !known && !active.iter().any(|a| a.name == r.name) && r.name.is_some() {
            let just_created = old.last_schedule_time.as_ref().is_some_and(|t| {
                r.name.as_deref() == Some(job_name(cj.metadata.name.as_deref().unwrap_or_default(), t.0).as_str())
            });
            if just_created {
                active.push(r.clone());
            }
        }
    }
    active.sort_by(|a, b| a.name.cmp(&b.name));

    if cj.metadata.deletion_timestamp.is_none() {
        cleanup_history(&spec, jobs, &mut out);
    }
    let schedule_and_zone = Schedule::parse(&spec.schedule).ok().zip(time_zone(cj));
    let Some((schedule, tz)) = schedule_and_zone else {
        out.events.push((
            "Warning",
            "UnparseableSchedule",
            format!(
                "unparseable schedule or time zone: {:?} {:?}",
                spec.schedule, spec.time_zone
            ),
        ));
        status.active = (!active.is_empty()).then_some(active);
        out.status = status;
        return out;
    };
    let next_requeue = |from: Timestamp| {
        schedule
            .next_after(from, &tz)
            .map(|n| (n.as_millisecond() - now.as_millisecond()) as f64 / 1000.0 + 0.1)
    };
    if cj.metadata.deletion_timestamp.is_some() || spec.suspend == Some(true) {
        status.active = (!active.is_empty()).then_some(active);
        out.status = status;
        return out;
    }

    let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let mut earliest = old.last_schedule_time.as_ref().map_or(created, |t| t.0);
    if let Some(deadline) = spec.starting_deadline_seconds {
        let cutoff = now
            .checked_sub(jiff::SignedDuration::from_secs(deadline))
            .unwrap_or(now);
        earliest = earliest.max(cutoff);
    }
    let (scheduled, missed) = most_recent(&schedule, &tz, earliest, now);
    out.requeue_after = next_requeue(now);
    let Some(scheduled) = scheduled else {
        status.active = (!active.is_empty()).then_some(active);
        out.status = status;
        return out;
    };
    if missed > TOO_MANY_MISSED {
        out.events.push((
            "Warning",
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        ));
    }
    if let Some(deadline) = spec.starting_deadline_seconds
        && scheduled.as_second() + deadline < now.as_second()
    {
        out.events.push((
            "Warning",
            "MissSchedule",
            format!("Missed scheduled time to start a job: {scheduled}"),
        ));
        status.active = (!active.is_empty()).then_some(active);
        out.status = status;
        return out;
    }
    let name = job_name(cj.metadata.name.as_deref().unwrap_or_default(), scheduled);
    let exists = jobs.iter().any(|j| j.metadata.name.as_deref() == Some(name.as_str()))
        || active.iter().any(|a| a.name.as_deref() == Some(name.as_str()));
    if exists {
        // Our cached CronJob may predate the status write that recorded this time.
        if status.last_schedule_time.as_ref().is_none_or(|t| t.0 < scheduled) {
            status.last_schedule_time = Some(Time(scheduled));
        }
        status.active = (!active.is_empty()).then_some(active);
        out.status = status;
        return out;
    }
    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if policy == "Forbid" && !active.is_empty() {
        out.events.push((
            "Normal",
            "JobAlreadyActive",
            "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
        ));
        status.active = Some(active);
        out.status = status;
        return out;
    }
    if policy == "Replace" {
        for a in active.drain(..) {
            if let Some(n) = a.name {
                out.delete
                    .push((n, "replaced by a newer run (concurrencyPolicy Replace)"));
            }
        }
    }
    let job = job_for(cj, scheduled, &tz);
    out.events
        .push(("Normal", "SuccessfulCreate", format!("Created job {name}")));
    active.push(ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: Some(name),
        namespace: cj.metadata.namespace.clone(),
        ..Default::default()
    });
    out.create = Some(job);
    status.last_schedule_time = Some(Time(scheduled));
    status.active = Some(active);
    out.status = status;
    out
}

/// Finished Jobs beyond the history limits go, oldest first (by start, else creation).
fn cleanup_history(spec: &k8s_openapi::api::batch::v1::CronJobSpec, jobs: &[Arc<Job>], out: &mut Plan) {
    let start = |j: &Job| {
        j.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref().map(|t| t.0))
            .or_else(|| j.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Arc<Job>> = jobs
            .iter()
            .filter(|j| finished(j) == Some(kind) && j.metadata.deletion_timestamp.is_none())
            .collect();
        done.sort_by_key(|j| start(j));
        let excess = done.len().saturating_sub(limit.max(0) as usize);
        for j in done.into_iter().take(excess) {
            if let Some(n) = j.metadata.name.clone() {
                out.delete.push((n, "beyond the history limit"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobCondition, JobStatus, JobTemplateSpec};

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn cronjob(schedule: &str, created: &str, policy: &str) -> CronJob {
        CronJob {
            metadata: ObjectMeta {
                name: Some("tick".into()),
                namespace: Some("ns".into()),
                uid: Some("cj-uid".into()),
                creation_timestamp: Some(Time(at(created))),
                ..Default::default()
            },
            spec: Some(CronJobSpec {
                schedule: schedule.into(),
                concurrency_policy: Some(policy.into()),
                job_template: JobTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_owned(), "tick".to_owned())].into()),
                        ..Default::default()
                    }),
                    spec: Some(Default::default()),
                },
                successful_jobs_history_limit: Some(1),
                failed_jobs_history_limit: Some(1),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn job(name: &str, uid: &str, state: Option<(&str, &str)>) -> Arc<Job> {
        let conditions = state.map(|(ty, when)| {
            vec![JobCondition {
                type_: ty.into(),
                status: "True".into(),
                last_transition_time: Some(Time(at(when))),
                ..Default::default()
            }]
        });
        Arc::new(Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(uid.into()),
                creation_timestamp: Some(Time(at("2024-05-01T10:00:00Z"))),
                ..Default::default()
            },
            spec: None,
            status: Some(JobStatus {
                conditions,
                completion_time: state.filter(|(ty, _)| *ty == "Complete").map(|(_, w)| Time(at(w))),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn a_due_time_creates_one_job_named_by_its_minute() {
        let cj = cronjob("* * * * *", "2024-05-01T10:00:30Z", "Allow");
        let p = plan(&cj, &[], at("2024-05-01T10:01:05Z"));
        let job = p.create.expect("a job");
        assert_eq!(job.metadata.name.as_deref(), Some("tick-28575961"));
        assert_eq!(
            job.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SCHEDULED_TIMESTAMP_ANNOTATION))
                .map(String::as_str),
            Some("2024-05-01T10:01:00+00:00")
        );
        assert_eq!(
            job.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str),
            Some("tick")
        );
        let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("CronJob", "cj-uid", Some(true))
        );
        assert_eq!(p.status.last_schedule_time, Some(Time(at("2024-05-01T10:01:00Z"))));
        assert_eq!(p.status.active.as_ref().map(Vec::len), Some(1));
        assert!((p.requeue_after.expect("next") - 55.1).abs() < 0.01);
        // Seen again with its Job in the cache: nothing more.
        let mut cj = cj;
        cj.status = Some(p.status);
        let again = plan(&cj, &[job_arc(job)], at("2024-05-01T10:01:30Z"));
        assert!(again.create.is_none());
        assert_eq!(again.status.active.as_ref().map(Vec::len), Some(1));
    }

    fn job_arc(mut j: Job) -> Arc<Job> {
        j.metadata.uid = Some("j-uid".into());
        Arc::new(j)
    }

    #[test]
    fn nothing_is_due_before_the_first_time_or_while_suspended() {
        let cj = cronjob("0 * * * *", "2024-05-01T10:00:30Z", "Allow");
        let p = plan(&cj, &[], at("2024-05-01T10:30:00Z"));
        assert!(p.create.is_none());
        assert!((p.requeue_after.expect("next") - 1800.1).abs() < 0.01);
        let mut suspended = cronjob("* * * * *", "2024-05-01T10:00:30Z", "Allow");
        if let Some(s) = suspended.spec.as_mut() {
            s.suspend = Some(true);
        }
        assert!(plan(&suspended, &[], at("2024-05-01T10:30:00Z")).create.is_none());
    }

    #[test]
    fn forbid_waits_and_replace_deletes_the_running_job() {
        let running = job("tick-28575961", "r1", None);
        let forbid = cronjob("* * * * *", "2024-05-01T10:00:30Z", "Forbid");
        let p = plan(&forbid, std::slice::from_ref(&running), at("2024-05-01T10:02:05Z"));
        assert!(p.create.is_none());
        assert_eq!(p.events[0].1, "JobAlreadyActive");
        let replace = cronjob("* * * * *", "2024-05-01T10:00:30Z", "Replace");
        let p = plan(&replace, std::slice::from_ref(&running), at("2024-05-01T10:02:05Z"));
        assert_eq!(p.create.and_then(|j| j.metadata.name).as_deref(), Some("tick-28575962"));
        assert_eq!(
            p.delete,
            vec![(
                "tick-28575961".to_owned(),
                "replaced by a newer run (concurrencyPolicy Replace)"
            )]
        );
        let allow = cronjob("* * * * *", "2024-05-01T10:00:30Z", "Allow");
        let p = plan(&allow, &[running], at("2024-05-01T10:02:05Z"));
        assert!(p.create.is_some() && p.delete.is_empty());
        assert_eq!(p.status.active.as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn a_missed_start_past_the_deadline_is_skipped() {
        let mut cj = cronjob("0 * * * *", "2024-05-01T09:00:30Z", "Allow");
        if let Some(s) = cj.spec.as_mut() {
            s.starting_deadline_seconds = Some(60);
        }
        // Due at 10:00, seen at 10:05: more than 60 s late.
        let p = plan(&cj, &[], at("2024-05-01T10:05:00Z"));
        assert!(p.create.is_none());
        // Within the deadline it starts.
        assert!(plan(&cj, &[], at("2024-05-01T10:00:50Z")).create.is_some());
        // Without one, a controller that was down starts the newest missed time only.
        let cj = cronjob("* * * * *", "2024-04-01T09:00:30Z", "Allow");
        let p = plan(&cj, &[], at("2024-05-01T10:05:10Z"));
        assert_eq!(p.create.and_then(|j| j.metadata.name).as_deref(), Some("tick-28575965"));
        assert_eq!(p.events[0].1, "TooManyMissedTimes");
    }

    #[test]
    fn history_limits_and_success_time() {
        let jobs = [
            job("tick-1", "a", Some(("Complete", "2024-05-01T10:01:10Z"))),
            job("tick-2", "b", Some(("Complete", "2024-05-01T10:02:10Z"))),
            job("tick-3", "c", Some(("Failed", "2024-05-01T10:03:10Z"))),
            job("tick-4", "d", None),
        ];
        let mut jobs = jobs.to_vec();
        // Start order is creation order here.
        for (i, j) in jobs.iter_mut().enumerate() {
            let mut owned = (**j).clone();
            owned.metadata.creation_timestamp = Some(Time(at(&format!("2024-05-01T10:0{i}:00Z"))));
            *j = Arc::new(owned);
        }
        let cj = cronjob("0 0 1 1 *", "2024-05-01T09:00:30Z", "Allow");
        let p = plan(&cj, &jobs, at("2024-05-01T10:05:00Z"));
        assert_eq!(p.delete, vec![("tick-1".to_owned(), "beyond the history limit")]);
        assert_eq!(p.status.last_successful_time, Some(Time(at("2024-05-01T10:02:10Z"))));
        let active: Vec<_> = p
            .status
            .active
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.name)
            .collect();
        assert_eq!(active, ["tick-4"]);
    }
}
