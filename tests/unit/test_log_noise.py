"""Ray's known-harmless lines are kept out of a run's output; everything else is printed."""

from __future__ import annotations

import io
import logging
import warnings

import pytest

from orchestrator import log_noise
from orchestrator.log_noise import WorkerLogFilter, quiet_ray_noise

#: As Ray's log monitor hands them to the driver (from a real run's output).
PREEMPTION = (
    "[2026-12-02 04:23:05,436 E 421 453] core_worker.cc:2465: Actor with class name: "
    "'PreemptionWatcher' and ID: '141459ccc3c31fc906ab68eb01000000' has constructor arguments "
    "in the object store and max_restarts > 0. If the arguments in the object store go out of "
    "scope or are lost, the actor restart will fail. See "
    "https://github.com/ray-project/ray/issues/53727 for more details."
)
DEPRECATION = (
    "/venv/lib/python3.11/site-packages/transformers/modeling_utils.py:3312: FutureWarning: "
    "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use "
    "`is_activation_checkpointing` instead."
)
OTHER_WARNING = "/work/x.py:3: UserWarning: something that matters"


def test_known_noise_goes_and_everything_else_stays():
    lines = [
        "Setting up process group for: env:// [rank=0, world_size=1]",
        PREEMPTION,
        DEPRECATION,
        "  warnings.warn(",  # the warning's source line goes with it
        "Moving model to device: cpu",
        OTHER_WARNING,
        "  warnings.warn(",  # another warning's source line stays with that warning
        "[2026-12-02 04:23:05,436 E 421 453] core_worker.cc:99: a real error",
    ]
    assert WorkerLogFilter()(lines, "w1") == [lines[0], lines[4], lines[5], lines[6], lines[7]]


def test_a_warnings_source_line_in_the_next_batch_goes_too():
    drop = WorkerLogFilter()
    assert drop([DEPRECATION], "w1") == []
    assert drop(["next from another process", "  warnings.warn("], "w2") == [
        "next from another process",
        "  warnings.warn(",
    ]
    assert drop(["  warnings.warn(", "Moving model to device: cpu"], "w1") == [
        "Moving model to device: cpu"
    ]


def test_every_noise_says_why_it_is_harmless():
    assert all(len(noise.why) > 40 for noise in log_noise.WORKER_NOISE)
    assert all(len(why) > 40 for _, _, why in log_noise.DRIVER_NOISE)
    assert all(len(why) > 40 for _, why in log_noise.DRIVER_WARNINGS)


@pytest.fixture
def unfiltered(monkeypatch):
    """Ray's printing and the driver loggers as they were, after the test."""
    from ray._private import worker

    # The filter may be in place already (any earlier ensure_ray in this process).
    original = getattr(worker.print_worker_logs, "__wrapped__", worker.print_worker_logs)
    monkeypatch.setattr(worker, "print_worker_logs", original)
    for name, _, _ in log_noise.DRIVER_NOISE:
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    monkeypatch.delenv(log_noise.VERBOSE_ENV, raising=False)
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    return worker


def _printed(worker, lines: list[str]) -> str:
    out = io.StringIO()
    data = {"lines": lines, "pid": 421, "ip": "127.0.0.1", "localhost": "127.0.0.1"}
    data["is_err"], data["actor_name"] = True, "TrainController"
    worker.print_worker_logs(data, out)
    return out.getvalue()


def test_the_driver_prints_workers_lines_without_the_noise(unfiltered, monkeypatch):
    monkeypatch.setenv("RAY_COLOR_PREFIX", "0")
    quiet_ray_noise()
    quiet_ray_noise()  # a second call replaces the filter rather than stacking it
    printed = _printed(unfiltered, [PREEMPTION, "Started training worker group of size 1"])
    assert printed == "(TrainController pid=421) Started training worker group of size 1\n"
    assert _printed(unfiltered, [PREEMPTION]) == ""


def test_verbose_shows_everything_also_after_a_quiet_start(unfiltered, monkeypatch):
    quiet_ray_noise()
    monkeypatch.setenv(log_noise.VERBOSE_ENV, "1")
    quiet_ray_noise()
    assert "PreemptionWatcher" in _printed(unfiltered, [PREEMPTION])


def test_driver_records_of_the_noise_are_dropped_and_others_kept(unfiltered, caplog):
    quiet_ray_noise()
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    with caplog.at_level(logging.WARNING):
        auth.warning("Token authentication is enabled for this Ray cluster. Set ...")
        auth.warning("Token authentication is disabled for this Ray cluster. Anyone ...")
    assert [r.getMessage()[:40] for r in caplog.records] == [
        "Token authentication is disabled for thi"
    ]


def test_driver_warnings_of_the_noise_are_dropped_until_verbose(unfiltered, monkeypatch):
    """Tune's advice to reuse actors under PBT (``warnings.warn`` in ``tune.run``)."""
    advice = "Consider boosting PBT performance by enabling `reuse_actors` as well as ..."
    quiet_ray_noise()
    quiet_ray_noise()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what catch_warnings resets: ours must still apply
        quiet_ray_noise()
        warnings.warn(advice, stacklevel=1)
        warnings.warn("Something else about PBT", stacklevel=1)
        monkeypatch.setenv(log_noise.VERBOSE_ENV, "1")
        quiet_ray_noise()
        warnings.warn(advice, stacklevel=1)
    assert [str(w.message)[:24] for w in caught] == ["Something else about PBT", advice[:24]]
