"""The scheduler's pure parts (operator/scheduler.py): what it reads from Jobs, pods and ResizeJobs."""

from __future__ import annotations

from kresize_common import layout
from kresize_operator.scheduler import (
    Entry,
    Scheduler,
    _checkpoint_index,
    _newer,
    count_unschedulable,
    event_for,
    job_finished,
)

RJ = {"apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob",
      "metadata": {"name": "a", "namespace": "ns", "uid": "u1", "resourceVersion": "10"},
      "spec": {"parallelism": 3}, "status": {"phase": "Running", "shards": 8, "jobName": "a-resize"}}


def job(**status) -> dict:
    return {"metadata": {"name": "a-resize", "resourceVersion": "5"}, "spec": {"parallelism": 2}, "status": status}


def test_demand_is_unfinished_shards_capped_by_spec_parallelism():
    entry = Entry(RJ, job(completedIndexes="0-3", failedIndexes="5", active=2, terminating=1))
    assert entry.demand() == 3  # 3 unfinished (4, 6, 7), spec.parallelism 3
    entry.job = job(completedIndexes="0-6")
    assert entry.demand() == 1
    entry.job = job(completedIndexes="0-7")
    assert entry.demand() == 0


def test_pods_count_terminating_ones_and_a_suspended_job_has_no_parallelism():
    entry = Entry(RJ, job(active=2, terminating=1))
    assert entry.pods() == 3 and entry.job_parallelism() == 2
    entry.job = {**job(active=0), "spec": {"parallelism": 2, "suspend": True}}
    assert entry.pods() == 0 and entry.job_parallelism() == 0


def test_unschedulable_pods_are_pending_with_the_scheduler_saying_so():
    def pod(phase: str, *conditions: dict) -> dict:
        return {"status": {"phase": phase, "conditions": list(conditions)}}
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
    assert count_unschedulable([
        pod("Pending", unschedulable),
        pod("Pending", {"type": "PodScheduled", "status": "True"}),  # placed, pulling its image
        pod("Pending"),  # not looked at yet
        pod("Running", {"type": "PodScheduled", "status": "True"}),
        pod("Pending", {**unschedulable, "reason": "SchedulerError"}),
    ]) == 1


def test_job_finished_reads_the_final_condition_only():
    assert job_finished(job(conditions=[{"type": "SuccessCriteriaMet", "status": "True"}])) is None
    assert job_finished(job(conditions=[{"type": "Complete", "status": "True", "reason": "CompletionsReached"}])) \
        == ("Complete", "CompletionsReached", "")
    assert job_finished(job(conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                         "message": "too long"}])) == ("Failed", "DeadlineExceeded", "too long")


def test_an_older_watch_event_never_replaces_a_newer_write():
    assert _newer({"metadata": {"resourceVersion": "11"}}, RJ)
    assert not _newer({"metadata": {"resourceVersion": "9"}}, RJ)
    assert _newer({"metadata": {"resourceVersion": "opaque"}}, RJ)  # not integers: the order of arrival


def test_checkpoint_keys_name_their_index():
    work = layout.work_prefix("ns", "a", "u1")
    assert _checkpoint_index(work, layout.checkpoint_key(work, 12, 3)) == 12


def test_events_name_the_resizejob():
    event = event_for(RJ, "Normal", "Queued", "x" * 2000)
    assert event["involvedObject"] == {"apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "name": "a",
                                       "namespace": "ns", "uid": "u1"}
    assert event["reason"] == "Queued" and len(event["message"]) == 1024
    assert event["metadata"] == {"generateName": "a.", "namespace": "ns"}


def test_a_lowered_job_counts_its_old_pods_until_a_newer_status_shows_them_gone():
    entry = Entry(RJ, job(active=0))  # the Job controller has not reported its 2 new pods yet
    entry.draining_from, entry.drain_version, entry.drain_deadline = 2, 5, float("inf")
    assert entry.occupied() == 2
    entry.job = {**job(active=1, terminating=1), "metadata": {"resourceVersion": "6"}, "spec": {"parallelism": 1}}
    entry.settle()
    assert entry.occupied() == 2  # one still terminating
    entry.job = {**job(active=1), "metadata": {"resourceVersion": "7"}, "spec": {"parallelism": 1}}
    entry.settle()
    assert entry.occupied() == 1


def test_a_job_seen_before_its_resizejob_is_attached_when_the_resizejob_arrives():
    scheduler = Scheduler(config=None, memo=None, recreate_job=None)  # type: ignore[arg-type]
    owned = {**job(active=1), "metadata": {"name": "a-resize", "resourceVersion": "5",
                                           "ownerReferences": [{"kind": "ResizeJob", "uid": "u1", "name": "a"}]}}
    scheduler.observe_job(owned, "ADDED")  # after a restart the two watches race
    scheduler.observe_resizejob(RJ, "ADDED")
    entry = scheduler.entries["u1"]
    assert entry.job == owned and entry.job_changed
    scheduler.observe_job(owned, "DELETED")
    assert entry.job is None and entry.job_lost  # a Running job lost its Job: the next tick recreates it
