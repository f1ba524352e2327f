//! Status from what the children report: pure, so every case is a table test.
//!
//! A child's status is trusted only when its controller has seen its latest spec
//! (`status.observedGeneration == metadata.generation`). `Degraded` means a person should look:
//! a referenced Secret is missing, an apply failed, a rollout hit its deadline, the init Job
//! failed, or a component that was serving at this generation lost pods. A component that has
//! not come up yet for the current spec is `Progressing`, not `Degraded`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{ChatClusterStatus, ComponentStatus, ComponentsStatus, MongoDbStatus, Phase};
use crate::plan::{Component, Plan, Store};

/// What a Deployment or StatefulSet reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
    /// The Deployment's `Progressing` condition says `ProgressDeadlineExceeded`.
    pub deadline_exceeded: bool,
    /// A rollout is under way: old pods still run (Deployment), or the current revision is not
    /// the update revision yet (StatefulSet, which counts a recreated pod as updated before it
    /// is ready).
    pub rolling: bool,
}

impl Workload {
    pub fn from_deployment(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        Workload {
            generation: d.metadata.generation,
            observed_generation: status.observed_generation,
            desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            // Available, not just ready: a pod counts once it stayed ready `minReadySeconds`.
            ready: status.available_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            rolling: status.replicas.unwrap_or(0) > status.updated_replicas.unwrap_or(0),
            deadline_exceeded: status.conditions.unwrap_or_default().iter().any(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            }),
        }
    }

    pub fn from_statefulset(s: &StatefulSet) -> Self {
        let status = s.status.clone().unwrap_or_default();
        Workload {
            generation: s.metadata.generation,
            observed_generation: status.observed_generation,
            desired: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            rolling: status.update_revision.is_some()
                && status.current_revision != status.update_revision,
            deadline_exceeded: false,
        }
    }

    fn current(&self) -> bool {
        matches!((self.generation, self.observed_generation), (Some(g), Some(o)) if o >= g)
    }
}

/// MongoDB's init Job.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed(String),
}

impl JobState {
    pub fn from_job(job: &Job) -> Self {
        let status = job.status.clone().unwrap_or_default();
        let failed = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Failed" && c.status == "True");
        if let Some(c) = failed {
            JobState::Failed(c.message.or(c.reason).unwrap_or_default())
        } else if status.succeeded.unwrap_or(0) > 0 {
            JobState::Succeeded
        } else {
            JobState::Running
        }
    }
}

/// Something a person should fix, found while reconciling.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// A CamelCase reason for the `Degraded` condition.
    pub reason: &'static str,
    pub message: String,
}

/// What one reconcile saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub workloads: BTreeMap<Component, Workload>,
    pub init_job: Option<JobState>,
    pub problems: Vec<Problem>,
    /// Optional objects skipped because the server does not serve their API.
    pub notes: Vec<String>,
}

enum Health {
    Ready,
    Progressing(String),
    Degraded(String),
}

fn component_health(
    component: Component,
    desired: i32,
    workload: Option<&Workload>,
    established: bool,
) -> Health {
    let name = component.as_str();
    let Some(w) = workload else {
        return Health::Progressing(format!("{name}: not created yet"));
    };
    if !w.current() {
        return Health::Progressing(format!(
            "{name}: its controller has not seen the latest spec"
        ));
    }
    if w.deadline_exceeded {
        return Health::Degraded(format!(
            "{name}: the rollout exceeded its progress deadline ({}/{desired} available)",
            w.ready
        ));
    }
    if w.ready >= desired && w.updated >= desired {
        return Health::Ready;
    }
    if established && w.updated >= desired && !w.rolling {
        return Health::Degraded(format!("{name}: {}/{desired} pods ready", w.ready));
    }
    Health::Progressing(format!("{name}: {}/{desired} pods ready", w.ready))
}

/// Sets a condition, keeping its `lastTransitionTime` unless its status flips.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The status of a paused ChatCluster: earlier conditions kept, `Progressing` false.
pub fn paused(
    generation: Option<i64>,
    previous: Option<&ChatClusterStatus>,
    now: &Time,
) -> ChatClusterStatus {
    let mut status = previous.cloned().unwrap_or_default();
    let kept: Vec<Condition> = status
        .conditions
        .iter()
        .filter(|c| c.type_ != "Progressing")
        .cloned()
        .collect();
    let mut conditions = kept;
    conditions.push(condition(
        &status.conditions,
        "Progressing",
        false,
        "Paused",
        "spec.paused is true: the operator changes nothing until it is false".into(),
        generation,
        now,
    ));
    // Created paused: nothing is serving, and `kubectl wait` should say so, not hang unknowing.
    if !conditions.iter().any(|c| c.type_ == "Ready") {
        conditions.push(condition(
            &status.conditions,
            "Ready",
            false,
            "Paused",
            "spec.paused is true: nothing has been created".into(),
            generation,
            now,
        ));
    }
    conditions.sort_by_key(|c| condition_order(&c.type_));
    status.conditions = conditions;
    status.phase = Some(Phase::Paused);
    status.observed_generation = generation;
    status
}

fn condition_order(type_: &str) -> u8 {
    match type_ {
        "Ready" => 0,
        "Progressing" => 1,
        _ => 2,
    }
}

/// Per-component counts, and what is progressing or degraded.
fn components(
    plan: &Plan,
    observed: &Observed,
    established: bool,
) -> (
    ComponentsStatus,
    Vec<String>,
    Vec<(&'static str, String)>,
    bool,
) {
    let mut components = ComponentsStatus::default();
    let mut progressing = Vec::new();
    let mut degraded: Vec<(&'static str, String)> = observed
        .problems
        .iter()
        .map(|p| (p.reason, p.message.clone()))
        .collect();
    let mut any_ready = false;
    for component in Component::ALL {
        let external = matches!(
            (component, plan.store(component)),
            (Component::MongoDb | Component::RabbitMq, Store::External(_))
        );
        let slot = match component {
            Component::MongoDb => &mut components.mongodb,
            Component::RabbitMq => &mut components.rabbitmq,
            Component::Auth => &mut components.auth,
            Component::Chat => &mut components.chat,
            Component::WebSocket => &mut components.websocket,
        };
        if external {
            *slot = ComponentStatus {
                ready: 0,
                desired: 0,
                summary: "external".into(),
            };
            continue;
        }
        let desired = plan.desired(component);
        let workload = observed.workloads.get(&component);
        let ready = workload.map_or(0, |w| w.ready.min(desired));
        any_ready |= ready > 0;
        *slot = ComponentStatus {
            ready,
            desired,
            summary: format!("{ready}/{desired}"),
        };
        match component_health(component, desired, workload, established) {
            Health::Ready => {}
            Health::Progressing(m) => progressing.push(m),
            Health::Degraded(m) => degraded.push(("ComponentDegraded", m)),
        }
    }

    (components, progressing, degraded, any_ready)
}

/// What a reconcile concluded, for the conditions.
struct Verdict<'a> {
    ready: bool,
    progressing: &'a [String],
    degraded: &'a [(&'static str, String)],
    notes: &'a [String],
}

/// `Ready`, `Progressing` and `Degraded`, in that order.
fn conditions(
    plan: &Plan,
    verdict: &Verdict<'_>,
    generation: Option<i64>,
    previous_conditions: &[Condition],
    now: &Time,
) -> Vec<Condition> {
    let Verdict {
        ready,
        progressing,
        degraded,
        notes: observed_notes,
    } = *verdict;
    let notes = if observed_notes.is_empty() {
        String::new()
    } else {
        format!("; {}", observed_notes.join("; "))
    };
    let ready_condition = if ready {
        let pods: i32 = Component::ALL.iter().map(|c| plan.desired(*c)).sum();
        condition(
            previous_conditions,
            "Ready",
            true,
            "AllComponentsReady",
            format!("all {pods} pods ready{notes}"),
            generation,
            now,
        )
    } else {
        let mut waiting: Vec<String> = degraded.iter().map(|(_, m)| m.clone()).collect();
        waiting.extend(progressing.iter().cloned());
        condition(
            previous_conditions,
            "Ready",
            false,
            if degraded.is_empty() {
                "ComponentsNotReady"
            } else {
                "Degraded"
            },
            format!("{}{notes}", waiting.join("; ")),
            generation,
            now,
        )
    };
    let progressing_condition = if progressing.is_empty() {
        condition(
            previous_conditions,
            "Progressing",
            false,
            "Stable",
            "every component runs its latest spec".into(),
            generation,
            now,
        )
    } else {
        condition(
            previous_conditions,
            "Progressing",
            true,
            "RollingOut",
            progressing.join("; "),
            generation,
            now,
        )
    };
    let degraded_condition = match degraded.first() {
        None => condition(
            previous_conditions,
            "Degraded",
            false,
            "AsExpected",
            "nothing needs attention".into(),
            generation,
            now,
        ),
        Some((reason, _)) => condition(
            previous_conditions,
            "Degraded",
            true,
            reason,
            degraded
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            generation,
            now,
        ),
    };

    vec![ready_condition, progressing_condition, degraded_condition]
}

/// The status after a reconcile of `plan` at `generation`.
pub fn compute(
    plan: &Plan,
    generation: Option<i64>,
    observed: &Observed,
    previous: Option<&ChatClusterStatus>,
    now: &Time,
) -> ChatClusterStatus {
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    // Serving at this generation before: a drop in ready pods now is a loss, not a start-up.
    let established = previous.is_some_and(|p| {
        p.observed_generation == generation
            && matches!(p.phase, Some(Phase::Ready | Phase::Degraded))
    });

    let (components, mut progressing, mut degraded, any_ready) =
        components(plan, observed, established);
    let mongodb = match &plan.mongodb {
        Store::Provisioned(_) => {
            let initialized = matches!(observed.init_job, Some(JobState::Succeeded));
            match &observed.init_job {
                Some(JobState::Failed(m)) => degraded.push((
                    "MongoDbInitFailed",
                    format!("the mongodb init Job failed ({m}); its log says why"),
                )),
                Some(JobState::Succeeded) => {}
                _ => progressing.push("mongodb: the init Job has not completed".into()),
            }
            Some(MongoDbStatus {
                members: plan.mongodb_members(),
                initialized,
            })
        }
        Store::External(_) => None,
    };

    let ready = progressing.is_empty() && degraded.is_empty();
    let phase = if !degraded.is_empty() {
        Phase::Degraded
    } else if ready {
        Phase::Ready
    } else if !any_ready
        && previous
            .and_then(|p| p.phase)
            .is_none_or(|p| p == Phase::Pending)
    {
        Phase::Pending
    } else {
        Phase::Progressing
    };

    let conditions = conditions(
        plan,
        &Verdict {
            ready,
            progressing: &progressing,
            degraded: &degraded,
            notes: &observed.notes,
        },
        generation,
        previous_conditions,
        now,
    );
    ChatClusterStatus {
        observed_generation: generation,
        phase: Some(phase),
        components,
        mongodb,
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_plan;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn workload(desired: i32, ready: i32, current: bool) -> Workload {
        Workload {
            generation: Some(2),
            observed_generation: Some(if current { 2 } else { 1 }),
            desired,
            ready,
            updated: desired,
            deadline_exceeded: false,
            rolling: false,
        }
    }

    /// Every provisioned component with `ready` of its pods, the init Job in `job`.
    fn observed(ready: i32, current: bool, job: Option<JobState>) -> Observed {
        let mut o = Observed {
            init_job: job,
            ..Observed::default()
        };
        for c in Component::ALL {
            o.workloads.insert(c, workload(1, ready.min(1), current));
        }
        o
    }

    fn cond<'a>(s: &'a ChatClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    #[rustfmt::skip]
    fn status_table() {
        let plan = test_plan(json!({}));
        let external = test_plan(json!({
            "mongodb": {"external": {"uriSecretRef": {"name": "m", "key": "uri"}}},
            "rabbitmq": {"external": {"uriSecretRef": {"name": "r", "key": "uri"}}},
        }));
        let ready_before = ChatClusterStatus {
            observed_generation: Some(2),
            phase: Some(Phase::Ready),
            ..ChatClusterStatus::default()
        };
        let missing = Observed {
            problems: vec![Problem {
                reason: "SecretNotFound",
                message: "Secret x does not exist".into(),
            }],
            ..observed(1, true, Some(JobState::Succeeded))
        };
        let mut external_ready = observed(1, true, None);
        external_ready.workloads.remove(&Component::MongoDb);
        external_ready.workloads.remove(&Component::RabbitMq);
        let succeeded = || Some(JobState::Succeeded);
        let failed = Some(JobState::Failed("BackoffLimitExceeded".into()));
        // Expected phase and the statuses of Ready, Progressing and Degraded.
        let table = [
            ("nothing exists yet", &plan, Observed::default(), None, Phase::Pending, ["False", "True", "False"]),
            ("children not ready", &plan, observed(0, true, Some(JobState::Running)), None, Phase::Pending, ["False", "True", "False"]),
            ("all ready", &plan, observed(1, true, succeeded()), None, Phase::Ready, ["True", "False", "False"]),
            ("ready counts of a stale generation", &plan, observed(1, false, succeeded()), None, Phase::Progressing, ["False", "True", "False"]),
            ("init Job still running", &plan, observed(1, true, Some(JobState::Running)), None, Phase::Progressing, ["False", "True", "False"]),
            ("init Job failed", &plan, observed(1, true, failed), None, Phase::Degraded, ["False", "False", "True"]),
            ("pods lost after being ready", &plan, observed(0, true, succeeded()), Some(&ready_before), Phase::Degraded, ["False", "False", "True"]),
            ("a rollout at the same generation", &plan, {
                let mut o = observed(0, true, succeeded());
                o.workloads.values_mut().for_each(|w| w.rolling = true);
                o
            }, Some(&ready_before), Phase::Progressing, ["False", "True", "False"]),
            ("a referenced Secret is missing", &plan, missing, None, Phase::Degraded, ["False", "False", "True"]),
            ("external stores need no pods", &external, external_ready, None, Phase::Ready, ["True", "False", "False"]),
        ];
        for (case, plan, observed, previous, phase, [ready, progressing, degraded]) in table {
            let s = compute(plan, Some(2), &observed, previous, &at(100));
            assert_eq!(s.phase, Some(phase), "{case}: phase");
            assert_eq!(cond(&s, "Ready").status, ready, "{case}: Ready");
            assert_eq!(cond(&s, "Progressing").status, progressing, "{case}: Progressing");
            assert_eq!(cond(&s, "Degraded").status, degraded, "{case}: Degraded");
            assert_eq!(s.observed_generation, Some(2), "{case}");
            assert!(s.conditions.iter().all(|c| c.observed_generation == Some(2)), "{case}");
        }
    }

    #[test]
    fn counts_and_members_are_reported() {
        let plan = test_plan(json!({"mongodb": {"replicas": 3}, "websocket": {"replicas": 3}}));
        let mut o = observed(1, true, Some(JobState::Succeeded));
        o.workloads
            .insert(Component::WebSocket, workload(3, 2, true));
        o.workloads.insert(Component::MongoDb, workload(3, 3, true));
        let s = compute(&plan, Some(2), &o, None, &at(100));
        assert_eq!(s.components.websocket.summary, "2/3");
        assert_eq!(s.components.mongodb.summary, "3/3");
        assert!(
            cond(&s, "Progressing")
                .message
                .contains("websocket: 2/3 pods ready")
        );
        let members = s.mongodb.unwrap().members;
        assert_eq!(members.len(), 3);
        assert!(members[2].starts_with("demo-mongodb-2.demo-mongodb.chat.svc"));
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let plan = test_plan(json!({}));
        let ready = observed(1, true, Some(JobState::Succeeded));
        let first = compute(&plan, Some(2), &ready, None, &at(100));
        let same = compute(&plan, Some(2), &ready, Some(&first), &at(200));
        assert_eq!(cond(&same, "Ready").last_transition_time, at(100));
        let lost = compute(
            &plan,
            Some(2),
            &observed(0, true, Some(JobState::Succeeded)),
            Some(&same),
            &at(300),
        );
        assert_eq!(cond(&lost, "Ready").last_transition_time, at(300));
        assert_eq!(cond(&lost, "Degraded").last_transition_time, at(300));
        // Progressing stayed False throughout.
        assert_eq!(cond(&lost, "Progressing").last_transition_time, at(100));
    }

    #[test]
    fn paused_keeps_the_earlier_conditions_and_says_why() {
        let plan = test_plan(json!({}));
        let ready = compute(
            &plan,
            Some(2),
            &observed(1, true, Some(JobState::Succeeded)),
            None,
            &at(100),
        );
        let paused = paused(Some(3), Some(&ready), &at(200));
        assert_eq!(paused.phase, Some(Phase::Paused));
        assert_eq!(cond(&paused, "Ready").status, "True");
        assert_eq!(cond(&paused, "Progressing").reason, "Paused");
        assert_eq!(paused.observed_generation, Some(3));
        let fresh = super::paused(Some(1), None, &at(100));
        assert_eq!(cond(&fresh, "Ready").status, "False");
        assert_eq!(cond(&fresh, "Ready").reason, "Paused");
    }

    #[test]
    fn a_deployment_past_its_deadline_is_degraded_and_skipped_optional_kinds_are_noted() {
        let plan = test_plan(json!({}));
        let mut o = observed(1, true, Some(JobState::Succeeded));
        o.workloads
            .get_mut(&Component::Chat)
            .unwrap()
            .deadline_exceeded = true;
        o.workloads.get_mut(&Component::Chat).unwrap().ready = 0;
        o.notes.push("ServiceMonitor/demo skipped".into());
        let s = compute(&plan, Some(2), &o, None, &at(100));
        assert_eq!(cond(&s, "Degraded").reason, "ComponentDegraded");
        assert!(cond(&s, "Degraded").message.contains("progress deadline"));
        assert!(
            cond(&s, "Ready")
                .message
                .contains("ServiceMonitor/demo skipped")
        );
    }
}
