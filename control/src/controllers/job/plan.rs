//! What a Job needs now, from its object and the pods it controls (pure), as upstream's
//! job controller decides it: pods to create (with their completion index when Indexed)
//! and to delete, the status (counts, start and completion times, completed indexes,
//! conditions as 1.31+ sets them), and when to look again (pod backoff, the active
//! deadline, `ttlSecondsAfterFinished`).
//!
//! Counts come from the pods themselves, not from upstream's `job-tracking` finalizer:
//! `succeeded`, `failed` and `completedIndexes` never go down when a finished pod
//! disappears, but a pod deleted before the controller saw it finish is not counted.

use std::{collections::BTreeSet, sync::Arc};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        batch::v1::{Job, JobCondition, JobStatus},
        core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};

use crate::controllers::workload::{controller_ref, is_active, is_ready};

/// Upstream's completion index annotation (and, since 1.28, label) on Indexed pods.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// Upstream's pod failure backoff: 10 s doubling per failure since the last success, at
/// most 6 minutes.
const BACKOFF_BASE_SECONDS: i64 = 10;
const BACKOFF_MAX_SECONDS: i64 = 360;

#[derive(Debug, Default)]
pub struct Plan {
    /// Pods to create: one entry each, with the completion index of Indexed Jobs.
    pub create: Vec<Option<i32>>,
    /// Active pods to delete (surplus, finished Job, duplicate index), in that order.
    pub delete: Vec<Arc<Pod>>,
    pub status: JobStatus,
    /// Events to record: (type, reason, message).
    pub events: Vec<(&'static str, &'static str, String)>,
    /// The Job is finished and past `ttlSecondsAfterFinished`: delete it.
    pub delete_job: bool,
    /// Seconds until something here changes by time alone.
    pub recheck_after: Option<f64>,
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

fn condition<'a>(status: &'a JobStatus, ty: &str) -> Option<&'a JobCondition> {
    status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == ty && c.status == "True")
}

/// When the Job finished (Complete or Failed), if it has.
pub fn finished_at(job: &Job) -> Option<Timestamp> {
    let status = job.status.as_ref()?;
    if let Some(c) = condition(status, "Complete") {
        return status
            .completion_time
            .as_ref()
            .or(c.last_transition_time.as_ref())
            .map(|t| t.0);
    }
    condition(status, "Failed").map(|c| c.last_transition_time.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0))
}

/// The completion index a pod carries (annotation first, as upstream reads it).
pub fn index_of(pod: &Pod) -> Option<i32> {
    let meta = &pod.metadata;
    let from = |m: Option<&std::collections::BTreeMap<String, String>>| {
        m.and_then(|m| m.get(COMPLETION_INDEX))
            .and_then(|v| v.parse::<i32>().ok())
    };
    from(meta.annotations.as_ref()).or_else(|| from(meta.labels.as_ref()))
}

/// When a finished pod finished: its containers' last termination, else its creation.
fn finish_time(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0))
        .max();
    terminated.or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// `1,3-5,7` from a set of indexes (upstream's completedIndexes format).
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// The indexes of a completedIndexes string; malformed parts are skipped.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

fn new_condition(ty: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets a condition, keeping its transition time when its status does not change.
fn set_condition(conditions: &mut Vec<JobCondition>, c: JobCondition) {
    match conditions.iter_mut().find(|o| o.type_ == c.type_) {
        Some(o) if o.status == c.status => {}
        Some(o) => *o = c,
        None => conditions.push(c),
    }
}

/// Plans one Job; `pods` are the pods it controls.
pub fn plan(job: &Job, pods: &[Arc<Pod>], now: Timestamp) -> Plan {
    let mut out = Plan::default();
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| is_active(p)).collect();

    if let Some(done) = finished_at(job) {
        // A finished Job changes no more; what still runs goes, and the Job itself once
        // its time to live is up (upstream's ttl-after-finished controller).
        out.delete = active.into_iter().cloned().collect();
        out.status = old;
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let expires = done.as_second() + i64::from(ttl);
            if now.as_second() >= expires {
                out.delete_job = job.metadata.deletion_timestamp.is_none();
            } else {
                out.recheck_after = Some((expires - now.as_second()) as f64);
            }
        }
        return out;
    }

    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let succeeded_pods: Vec<&Arc<Pod>> = pods.iter().filter(|p| phase(p) == "Succeeded").collect();
    let failed_pods: Vec<&Arc<Pod>> = pods.iter().filter(|p| phase(p) == "Failed").collect();
    let terminating = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() && !matches!(phase(p), "Succeeded" | "Failed"))
        .count();

    let mut completed: BTreeSet<i32> = BTreeSet::new();
    let succeeded = if indexed {
        let c = completions.unwrap_or(0);
        completed = parse_indexes(old.completed_indexes.as_deref().unwrap_or_default());
        completed.extend(
            succeeded_pods
                .iter()
                .filter_map(|p| index_of(p))
                .filter(|i| (0..c).contains(i)),
        );
        completed.len() as i32
    } else {
        (succeeded_pods.len() as i32).max(old.succeeded.unwrap_or(0))
    };
    let failed = (failed_pods.len() as i32).max(old.failed.unwrap_or(0));
    // With restartPolicy OnFailure a failing container restarts in place: its restarts
    // count toward the backoff limit as failed pods do.
    let on_failure = spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("OnFailure");
    let restarts: i32 = if on_failure {
        active
            .iter()
            .flat_map(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.clone())
                    .unwrap_or_default()
            })
            .map(|c| c.restart_count)
            .sum()
    } else {
        0
    };

    let mut conditions = old.conditions.clone().unwrap_or_default();
    let suspended = spec.suspend == Some(true);
    let mut start_time = old.start_time.clone();
    let mut completion_time = None;
    let mut finishing = false;
    if suspended {
        set_condition(
            &mut conditions,
            new_condition("Suspended", "True", "JobSuspended", "Job suspended", now),
        );
        start_time = None;
        out.delete = active.iter().map(|p| (*p).clone()).collect();
    } else {
        if conditions.iter().any(|c| c.type_ == "Suspended" && c.status == "True") {
            set_condition(
                &mut conditions,
                new_condition("Suspended", "False", "JobResumed", "Job resumed", now),
            );
        }
        let start = start_time.as_ref().map_or(now, |t| t.0);
        start_time = Some(Time(start));

        let done = match (indexed, completions) {
            (_, Some(c)) => succeeded >= c,
            // A work queue: done when one pod succeeded and none runs any more.
            (false, None) => succeeded > 0 && active.is_empty(),
            (true, None) => false,
        };
        let deadline = spec
            .active_deadline_seconds
            .map(|d| start.as_second() + d)
            .filter(|_| !done);
        let failure = if deadline.is_some_and(|d| now.as_second() >= d) {
            Some(("DeadlineExceeded", "Job was active longer than specified deadline"))
        } else if !done && failed + restarts > spec.backoff_limit.unwrap_or(6) {
            Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
        } else {
            None
        };
        if let Some((reason, message)) = failure {
            set_condition(
                &mut conditions,
                new_condition("FailureTarget", "True", reason, message, now),
            );
            set_condition(&mut conditions, new_condition("Failed", "True", reason, message, now));
            out.events.push(("Warning", reason, message.to_owned()));
            out.delete = active.iter().map(|p| (*p).clone()).collect();
            finishing = true;
        } else if done {
            set_condition(
                &mut conditions,
                new_condition(
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                ),
            );
            set_condition(
                &mut conditions,
                new_condition(
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                ),
            );
            completion_time = Some(Time(now));
            out.events.push(("Normal", "Completed", "Job completed".into()));
            out.delete = active.iter().map(|p| (*p).clone()).collect();
            finishing = true;
        } else {
            // A Job being deleted starts nothing new: its pods go with it.
            if job.metadata.deletion_timestamp.is_none() {
                manage_pods(
                    &spec,
                    indexed,
                    succeeded,
                    &completed,
                    &active,
                    &failed_pods,
                    &succeeded_pods,
                    now,
                    &mut out,
                );
            }
            if let Some(d) = deadline {
                let left = (d - now.as_second()).max(1) as f64;
                out.recheck_after = Some(out.recheck_after.map_or(left, |r| r.min(left)));
            }
        }
    }
    let still_active = if finishing || suspended { 0 } else { active.len() as i32 };
    let ready = if finishing || suspended {
        0
    } else {
        active.iter().filter(|p| is_ready(p)).count() as i32
    };
    out.status = JobStatus {
        active: Some(still_active),
        ready: Some(ready),
        succeeded: Some(succeeded),
        failed: Some(failed),
        terminating: Some(terminating as i32),
        start_time,
        completion_time,
        completed_indexes: indexed.then(|| format_indexes(&completed)),
        conditions: (!conditions.is_empty()).then_some(conditions),
        failed_indexes: old.failed_indexes.clone(),
        uncounted_terminated_pods: old.uncounted_terminated_pods.clone(),
    };
    out
}

/// Creates and deletes toward `parallelism` pods, never more than the completions left,
/// after the failure backoff.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one plan, computed once by the caller"
)]
fn manage_pods(
    spec: &k8s_openapi::api::batch::v1::JobSpec,
    indexed: bool,
    succeeded: i32,
    completed: &BTreeSet<i32>,
    active: &[&Arc<Pod>],
    failed_pods: &[&Arc<Pod>],
    succeeded_pods: &[&Arc<Pod>],
    now: Timestamp,
    out: &mut Plan,
) {
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let mut keep: Vec<&Arc<Pod>> = Vec::new();
    let mut running_indexes = BTreeSet::new();
    for pod in active {
        if indexed {
            let index = index_of(pod);
            let valid = index.is_some_and(|i| (0..spec.completions.unwrap_or(0)).contains(&i));
            // A pod for an index already done, a second pod for one, or one without: gone.
            if !valid || index.is_some_and(|i| completed.contains(&i) || !running_indexes.insert(i)) {
                out.delete.push((*pod).clone());
                continue;
            }
        }
        keep.push(pod);
    }
    let want = match (indexed, spec.completions) {
        (_, Some(c)) => parallelism.min((c - succeeded).max(0)),
        (false, None) if succeeded > 0 => keep.len() as i32,
        _ => parallelism,
    } as usize;
    if keep.len() > want {
        // Not ready before ready, then newest first (upstream's active pod ranking).
        let mut ranked = keep.clone();
        ranked.sort_by_key(|p| {
            (
                is_ready(p),
                std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            )
        });
        out.delete.extend(ranked.into_iter().take(keep.len() - want).cloned());
        return;
    }
    let missing = want - keep.len();
    if missing == 0 {
        return;
    }
    // Failures since the last success delay the next pod: 10 s, 20 s, 40 s, ...
    let last_success = succeeded_pods.iter().filter_map(|p| finish_time(p)).max();
    let recent: Vec<Timestamp> = failed_pods
        .iter()
        .filter_map(|p| finish_time(p))
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    if let Some(last) = recent.iter().max() {
        let n = recent.len().min(16) as u32;
        let delay = (BACKOFF_BASE_SECONDS << (n - 1)).min(BACKOFF_MAX_SECONDS);
        let ready_at = last.as_second() + delay;
        if now.as_second() < ready_at {
            out.recheck_after = Some((ready_at - now.as_second()) as f64);
            return;
        }
    }
    if indexed {
        let c = spec.completions.unwrap_or(0);
        out.create = (0..c)
            .filter(|i| !completed.contains(i) && !running_indexes.contains(i))
            .take(missing)
            .map(Some)
            .collect();
    } else {
        out.create = vec![None; missing];
    }
}

/// A pod for `job` from its template: `<job>-` (or `<job>-<index>-`) plus a random suffix,
/// with upstream's completion index annotation, label, env and hostname when Indexed.
pub fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    let generate_name = match index {
        Some(i) => {
            labels.insert(COMPLETION_INDEX.into(), i.to_string());
            annotations.insert(COMPLETION_INDEX.into(), i.to_string());
            if spec.hostname.as_deref().is_none_or(str::is_empty) {
                spec.hostname = Some(format!("{name}-{i}"));
            }
            let env = EnvVar {
                name: COMPLETION_INDEX_ENV.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                    }),
                    ..Default::default()
                }),
            };
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                let vars = c.env.get_or_insert_with(Vec::new);
                if !vars.iter().any(|v| v.name == COMPLETION_INDEX_ENV) {
                    vars.push(env.clone());
                }
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.metadata.namespace.clone(),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![controller_ref("batch/v1", "Job", &job.metadata)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        batch::v1::JobSpec,
        core::v1::{
            ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodSpec, PodStatus,
            PodTemplateSpec,
        },
    };

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    const NOW: &str = "2024-05-01T10:00:00Z";

    fn job(completions: Option<i32>, parallelism: i32, indexed: bool) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                namespace: Some("ns".into()),
                uid: Some("job-uid".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                backoff_limit: Some(1),
                completion_mode: Some(if indexed { "Indexed" } else { "NonIndexed" }.into()),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("job-name".to_owned(), "pi".to_owned())].into()),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".into()),
                        containers: vec![Default::default()],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, phase: &str, index: Option<i32>, finished: &str) -> Arc<Pod> {
        let mut p = pod_for(&job(Some(1), 1, index.is_some()), index);
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.creation_timestamp = Some(Time(at("2024-05-01T09:00:00Z")));
        let terminated = matches!(phase, "Succeeded" | "Failed").then(|| ContainerState {
            terminated: Some(ContainerStateTerminated {
                finished_at: Some(Time(at(finished))),
                exit_code: i32::from(phase == "Failed"),
                ..Default::default()
            }),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: Some(vec![ContainerStatus {
                state: terminated,
                ..Default::default()
            }]),
            conditions: (phase == "Running").then(|| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        Arc::new(p)
    }

    fn condition_types(p: &Plan) -> Vec<(String, Option<String>)> {
        p.status
            .conditions
            .iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.reason.clone()))
            .collect()
    }

    #[test]
    fn a_new_job_starts_parallelism_pods_but_no_more_than_completions_left() {
        let p = plan(&job(Some(5), 2, false), &[], at(NOW));
        assert_eq!(p.create, vec![None, None]);
        assert_eq!(p.status.start_time, Some(Time(at(NOW))));
        let pods = [
            pod("a", "Succeeded", None, NOW),
            pod("b", "Succeeded", None, NOW),
            pod("c", "Succeeded", None, NOW),
            pod("d", "Running", None, NOW),
        ];
        let p = plan(&job(Some(5), 3, false), &pods, at(NOW));
        assert_eq!(p.create, vec![None]);
        assert_eq!(
            (p.status.succeeded, p.status.active, p.status.ready),
            (Some(3), Some(1), Some(1))
        );
    }

    #[test]
    fn enough_successes_complete_the_job_with_upstreams_conditions() {
        let pods = [pod("a", "Succeeded", None, NOW)];
        let p = plan(&job(Some(1), 1, false), &pods, at(NOW));
        assert!(p.create.is_empty());
        assert_eq!(
            condition_types(&p),
            [
                ("SuccessCriteriaMet".to_owned(), Some("CompletionsReached".to_owned())),
                ("Complete".to_owned(), Some("CompletionsReached".to_owned()))
            ]
        );
        assert_eq!(p.status.completion_time, Some(Time(at(NOW))));
        // Finished: seen again, nothing changes; with a TTL it is deleted once past it.
        let mut done = job(Some(1), 1, false);
        done.status = Some(p.status.clone());
        let again = plan(&done, &pods, at("2024-05-01T10:00:30Z"));
        assert!(again.create.is_empty() && !again.delete_job && again.recheck_after.is_none());
        if let Some(s) = done.spec.as_mut() {
            s.ttl_seconds_after_finished = Some(60);
        }
        let early = plan(&done, &pods, at("2024-05-01T10:00:30Z"));
        assert_eq!((early.delete_job, early.recheck_after), (false, Some(30.0)));
        assert!(plan(&done, &pods, at("2024-05-01T10:01:00Z")).delete_job);
    }

    #[test]
    fn failures_back_off_then_exceed_the_limit_and_running_pods_go() {
        // One failure at 09:59:55: the next pod waits until 10:00:05.
        let first = [pod("a", "Failed", None, "2024-05-01T09:59:55Z")];
        let p = plan(&job(Some(1), 1, false), &first, at(NOW));
        assert!(p.create.is_empty());
        assert_eq!(p.recheck_after, Some(5.0));
        assert_eq!(p.status.failed, Some(1));
        let p = plan(&job(Some(1), 1, false), &first, at("2024-05-01T10:00:06Z"));
        assert_eq!(p.create, vec![None]);
        // Two failures with backoffLimit 1: Failed, and the pod still running is deleted.
        let pods = [
            pod("a", "Failed", None, "2024-05-01T09:59:00Z"),
            pod("b", "Failed", None, "2024-05-01T09:59:30Z"),
            pod("c", "Running", None, NOW),
        ];
        let p = plan(&job(Some(2), 2, false), &pods, at(NOW));
        assert_eq!(
            condition_types(&p),
            [
                ("FailureTarget".to_owned(), Some("BackoffLimitExceeded".to_owned())),
                ("Failed".to_owned(), Some("BackoffLimitExceeded".to_owned()))
            ]
        );
        assert_eq!(
            p.delete
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!((p.status.active, p.status.completion_time.is_none()), (Some(0), true));
    }

    #[test]
    fn the_active_deadline_fails_the_job() {
        let mut j = job(Some(1), 1, false);
        if let Some(s) = j.spec.as_mut() {
            s.active_deadline_seconds = Some(30);
        }
        j.status = Some(JobStatus {
            start_time: Some(Time(at("2024-05-01T09:59:50Z"))),
            ..Default::default()
        });
        let pods = [pod("a", "Running", None, NOW)];
        let p = plan(&j, &pods, at(NOW));
        assert_eq!(p.recheck_after, Some(20.0));
        let p = plan(&j, &pods, at("2024-05-01T10:00:20Z"));
        assert_eq!(
            condition_types(&p)[1],
            ("Failed".to_owned(), Some("DeadlineExceeded".to_owned()))
        );
        assert_eq!(p.delete.len(), 1);
    }

    #[test]
    fn indexed_jobs_run_each_missing_index_once() {
        let j = job(Some(4), 2, true);
        let p = plan(&j, &[], at(NOW));
        assert_eq!(p.create, vec![Some(0), Some(1)]);
        let pods = [
            pod("a", "Succeeded", Some(0), NOW),
            pod("b", "Running", Some(1), NOW),
            pod("c", "Running", Some(1), NOW),
            pod("d", "Succeeded", Some(3), NOW),
        ];
        let p = plan(&j, &pods, at(NOW));
        assert_eq!(p.create, vec![Some(2)]);
        assert_eq!(
            p.delete
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0,3"));
        assert_eq!(p.status.succeeded, Some(2));
        let done = [
            pod("a", "Succeeded", Some(0), NOW),
            pod("b", "Succeeded", Some(1), NOW),
            pod("c", "Succeeded", Some(2), NOW),
            pod("d", "Succeeded", Some(3), NOW),
        ];
        let p = plan(&j, &done, at(NOW));
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0-3"));
        assert_eq!(condition_types(&p)[1].0, "Complete");
    }

    #[test]
    fn indexed_pods_carry_their_index_and_hostname() {
        let p = pod_for(&job(Some(3), 1, true), Some(2));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-2-"));
        assert_eq!(
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(COMPLETION_INDEX))
                .map(String::as_str),
            Some("2")
        );
        assert_eq!(
            p.metadata
                .labels
                .as_ref()
                .and_then(|a| a.get(COMPLETION_INDEX))
                .map(String::as_str),
            Some("2")
        );
        let spec = p.spec.expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("pi-2"));
        let env = &spec.containers[0].env.as_ref().expect("env")[0];
        assert_eq!(env.name, COMPLETION_INDEX_ENV);
        assert_eq!(
            env.value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            Some("metadata.annotations['batch.kubernetes.io/job-completion-index']")
        );
        let owner = &p.metadata.owner_references.expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("Job", Some(true)));
    }

    #[test]
    fn index_sets_round_trip_through_upstreams_format() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
    }
}
