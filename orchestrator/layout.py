"""Where everything lives under a storage root: the one module that names the folders and files.

    <storage.uri>/
      _compiled/<key>/             a source compiled to token ids (orchestrator.data.compile)
      <name>/<run id>/             a run: a spec's content hash names it
        spec.yaml                  the spec as run (credentials never in it)
        lease.json                 held by the driver that is running it
        checkpoint_<time>/         Ray Train's checkpoints (orchestrator.checkpoints)
        history.jsonl              one training report per line (orchestrator.monitor)
        model/ | model.rejected/   the exported model, manifest last (orchestrator.finalize)
        summary.json               what the run produced (orchestrator.summary)
        report.html, tensorboard/  for people
      <name>/tune-<id>/            a search: Tune's state, results.{csv,md}, metric_vs_step.png,
                                   summary.json; its trials train in run folders beside it
        pbt/trial-<trial id>/<segment>/<name>/<run id>/
                                   a population-based trial instead: one run folder per stretch
                                   of training between exploits (segment ``start``, or
                                   ``step-<n>-from-<donor>``), never where a plain run is found

Readers (``runs list``, ``orchestrator pull``, jobs' results) and writers import the names from
here, so a file is renamed in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.storage import Location

if TYPE_CHECKING:
    from orchestrator.spec import ExperimentSpec

COMPILED_DIR = "_compiled"
SPEC_FILE = "spec.yaml"
LEASE_FILE = "lease.json"
CHECKPOINT_PREFIX = "checkpoint_"
HISTORY_FILE = "history.jsonl"
MODEL_DIR = "model"
REJECTED_DIR = "model.rejected"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
TENSORBOARD_DIR = "tensorboard"

SEARCH_PREFIX = "tune-"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PLOT = "metric_vs_step.png"
#: Tune's record of a trial's sampled values, in the trial's folder of the search.
TRIAL_PARAMS_FILE = "params.json"
#: A population-based search's trials: weights that no plain run of their values reproduces.
PBT_TRIALS_DIR = "pbt"
#: The segment of a population-based trial before its first exploit.
PBT_START_SEGMENT = "start"


def run_location(spec: ExperimentSpec) -> Location:
    """``<storage>/<name>/<run id>``: the folder of the run of ``spec``."""
    return Location.of(spec.storage).join(spec.name, spec.run_id)


def tune_id(spec: ExperimentSpec) -> str:
    """One id per distinct search: the tune section counts, unlike in run ids."""
    return f"{SEARCH_PREFIX}{spec.hash(include_tune=True)[:12]}"


def tune_location(spec: ExperimentSpec) -> Location:
    """``<storage>/<name>/tune-<id>``: Tune's experiment state, results, plot and summary."""
    return Location.of(spec.storage).join(spec.name, tune_id(spec))


def pbt_segment_storage(search: ExperimentSpec, trial_id: str, segment: str) -> Location:
    """``<search>/pbt/trial-<id>/<segment>``: the storage root of one segment of a
    population-based trial (its run folder is ``<name>/<run id>`` under it)."""
    return tune_location(search).join(PBT_TRIALS_DIR, f"trial-{trial_id}", segment)
