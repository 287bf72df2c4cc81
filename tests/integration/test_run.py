"""End to end on a real local Ray (2 CPUs, 2 training workers) with a tiny real BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.summary import summary_dict

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def first_run(ray_cluster, tiny_model, corpora, tmp_path_factory, mlflow_uri):
    """A run that is also tracked in a real MLflow server (tracking is not part of the run id:
    the tests that run this spec again without it find this run)."""
    from orchestrator import run
    from tests.conftest import tiny_spec_dict

    spec = tiny_spec_dict(tiny_model, corpora, tmp_path_factory.mktemp("runs"))
    tracked = {**spec, "tracking": {"mlflow": {"uri": mlflow_uri, "experiment": "runs"}}}
    return spec, run(tracked)


def test_a_run_is_tracked_in_mlflow(first_run, mlflow_uri):
    """Its spec as params, every report as metrics by step, the evaluations and the verdict,
    and its summary, report and model card as artifacts, read back through MLflow's client."""
    from mlflow.tracking import MlflowClient

    spec, result = first_run
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("runs")
    (tracked,) = client.search_runs(
        [experiment.experiment_id], f"tags.`orchestrator.run_id` = '{result.run_id}'"
    )
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["train.lr"] == str(spec["train"]["lr"])
    assert tracked.data.params["loss.kind"] == spec["loss"]["kind"]
    history = json.loads((result.run_dir / "history.jsonl").read_text().splitlines()[-1])
    losses = client.get_metric_history(tracked.info.run_id, "train/loss")
    assert [m.step for m in losses] == list(range(1, 5))  # log_every=1, 4 steps
    assert losses[-1].value == pytest.approx(history["loss"])
    figures = tracked.data.metrics
    assert figures["finetuned/ndcg_at_10"] == pytest.approx(result.finetuned["ndcg@10"])
    assert figures["baseline/ndcg_at_10"] == pytest.approx(result.baseline["ndcg@10"])
    assert figures["verdict/delta"] == pytest.approx(result.summary.verdict.delta)
    assert tracked.data.tags["verdict"] == result.summary.verdict.outcome
    files = {f.path for f in client.list_artifacts(tracked.info.run_id)}
    assert {"summary.json", "report.html", "model_README.md"} <= files


def test_two_worker_run_reports_metrics_and_exports(first_run):
    from sentence_transformers import SentenceTransformer

    _, result = first_run
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 0
    assert summary["pairs_seen"] == 4 * 8
    assert sum(summary["source_steps"].values()) == 4
    # 2 workers x per-worker batch 4, gathered: each query sees 2*4 - 1 negatives.
    assert summary["negatives_per_query"] == 7
    for key in ("ndcg@10", "mrr@10", "recall@1", "recall@10", "map@100"):
        assert 0.0 <= summary["baseline"][key] <= 1.0
        assert 0.0 <= summary["finetuned"][key] <= 1.0
    verdict = summary["verdict"]
    assert verdict["delta"] == summary["finetuned"]["ndcg@10"] - summary["baseline"]["ndcg@10"]
    assert verdict["improved"] == (verdict["interval"][0] > 0)  # beyond the noise only
    # The broken row is reported with its file and line, and nothing else is lost.
    colors = summary["sources"]["colors"]
    assert colors["rows"] == 96 and colors["bad_rows"] == 1
    assert colors["examples"][0].endswith("colors.jsonl:6: empty 'question' (anchor)")
    assert summary["sources"]["more"]["rows"] == 64
    assert summary["sources"]["more"]["bad_rows"] == 0
    assert (result.run_dir / "spec.yaml").is_file()
    assert list(result.run_dir.glob("checkpoint_*/state.pt"))
    history = [json.loads(line) for line in (result.run_dir / "history.jsonl").open()]
    for report in history:
        assert 0.0 <= report["padding_fraction"] < 1.0  # the tiny corpus: all one length
        assert report["peak_memory_mib"] > 50  # a worker holding torch and a model
        assert 0.0 <= report["data_wait_fraction"] < 1.0

    model = SentenceTransformer(str(result.model_dir))
    embeddings = model.encode(["what color is the car", "the car is red and shiny"])
    assert embeddings.shape == (2, 32)
    card = (result.model_dir / "README.md").read_text()
    assert "infonce" in card and "τ = 0.05" in card and "| ndcg@10 |" in card


def test_resume_continues_at_the_checkpoint_step(first_run, tmp_path):
    from orchestrator import run

    spec, result = first_run
    checkpoint = result.summary.checkpoint
    meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    assert meta["step"] == 4
    resumed = dict(spec, train={**spec["train"], "max_steps": 6})
    resumed["storage"] = {"uri": str(tmp_path / "runs")}
    second = run(resumed, resume_from=checkpoint)
    assert second.summary.resumed_from_step == 4
    assert second.summary.steps == 6
    assert second.summary.pairs_seen == 6 * 8
    assert sum(second.summary.source_steps.values()) == 6
    # Mixture positions continue from the checkpoint: every batch taken exactly once so far.
    meta = json.loads((Path(second.summary.checkpoint) / "meta.json").read_text())
    assert {name: p["batch"] for name, p in meta["positions"].items()} == {
        name: second.summary.source_steps.get(name, 0) for name in spec["data"]["sources"]
    }


def test_lora_bf16_matryoshka_run_exports_merged_model(ray_cluster, tiny_model, corpora, tmp_path):
    """LoRA adapters train, bf16 autocast runs on CPU, and the export is a plain merged model;
    its ONNX and OpenVINO formats and its quantized embeddings are evaluated beside it."""
    from sentence_transformers import SentenceTransformer

    from orchestrator import run
    from tests.conftest import tiny_spec_dict

    spec = tiny_spec_dict(tiny_model, corpora, tmp_path)
    spec["lora"] = {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}
    spec["loss"] = {"kind": "mnrl", "temperature": 0.1, "matryoshka_dims": [32, 16]}
    spec["train"].update(max_steps=2, precision="bf16", lr=1e-2)
    spec["scaling"] = {"num_workers": 1, "cpus_per_worker": 1}
    spec["eval"] = {"batch_size": 16, "matryoshka_dims": [16], "quantization": ["int8", "binary"]}
    spec["export"] = {"formats": ["onnx", "onnx_int8", "openvino"]}
    result = run(spec)

    assert result.summary.steps == 2
    assert 0 < result.summary.trainable_params < result.summary.total_params / 5
    exported = list((result.model_dir).glob("*.safetensors")) + list(
        result.model_dir.glob("**/model.safetensors")
    )
    assert exported, "the export holds full (merged) weights"
    assert not list(result.model_dir.rglob("adapter_config.json"))
    model = SentenceTransformer(str(result.model_dir))
    base = SentenceTransformer(tiny_model)
    text = ["the boat is green and shiny"]
    assert model.encode(text).shape == (1, 32)
    assert abs(model.encode(text) - base.encode(text)).max() > 1e-4, "LoRA changed the weights"

    summary = result.summary
    assert [f.format for f in summary.formats] == ["pytorch", "onnx", "onnx_int8", "openvino"]
    for exported in summary.formats:
        assert (result.model_dir / exported.file).is_file() and exported.size_bytes > 0
        assert set(exported.metrics) == set(summary.finetuned)  # the same evaluation
    torch_figures, onnx, _, openvino = summary.formats
    for fp32 in (onnx, openvino):  # the same model through another runtime
        assert fp32.metrics["ndcg@10"] == pytest.approx(torch_figures.metrics["ndcg@10"], abs=1e-3)
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    published = {entry["path"] for entry in manifest["files"]}
    assert {"onnx/model.onnx", "openvino/openvino_model.bin"} <= published
    assert {"int8/ndcg@10", "binary/ndcg@10", "dim16/binary/ndcg@10"} <= set(summary.baseline)
    assert summary.embedding_dim == 32
    card = (result.model_dir / "README.md").read_text()
    assert "| 32 | binary | 4 |" in card and "| 16 | int8 | 16 |" in card
    assert "| onnx_int8 | `onnx/model_qint8.onnx` |" in card
    assert 'backend="openvino"' in card
    page = (result.run_dir / "report.html").read_text()
    assert "<h2>Exported formats</h2>" in page and "<h2>Embedding width and precision</h2>" in page


def test_rerunning_a_finished_spec_returns_its_result_or_reuses_its_checkpoint(first_run):
    """Same spec, same folder: the finished run's own result, nothing trained or evaluated
    again. Without its summary (a driver lost after training), Ray Train restores the last
    checkpoint and no step is repeated."""
    from orchestrator import run

    spec, result = first_run
    summary = json.loads((result.run_dir / "summary.json").read_text())
    again = run(spec)
    assert summary_dict(again.summary) == summary  # timings too
    assert again.model_dir == result.model_dir

    (result.run_dir / "summary.json").unlink()
    again = run(spec)
    assert again.run_dir == result.run_dir
    assert again.summary.resumed_from_step == 4
    assert again.summary.steps == 4
    assert again.summary.pairs_seen == 4 * 8
    assert again.summary.negatives_per_query == 7
    assert again.summary.finetuned == result.summary.finetuned


def test_fresh_starts_over_instead_of_resuming(first_run):
    from orchestrator import run

    spec, result = first_run
    again = run(spec, fresh=True)
    assert again.run_dir == result.run_dir
    assert again.summary.resumed_from_step == 0 and again.summary.steps == 4
    assert len(list(again.run_dir.glob("checkpoint_*/state.pt"))) == 2


def test_a_relative_storage_uri_means_the_drivers_folder(
    ray_cluster, tiny_model, corpora, tmp_path, monkeypatch
):
    """Workers run elsewhere than the driver; checkpoints still land under the driver's path."""
    from orchestrator import run
    from tests.conftest import tiny_spec_dict

    spec = tiny_spec_dict(tiny_model, corpora, tmp_path)
    spec["storage"] = {"uri": "relative-runs"}
    spec["train"].update(max_steps=2)
    spec["scaling"] = {"num_workers": 1, "cpus_per_worker": 1}
    monkeypatch.chdir(tmp_path)  # after Ray started: the workers keep their own directory
    result = run(spec)
    assert result.run_dir == tmp_path / "relative-runs" / "tiny" / result.run_id
    [checkpoint] = result.run_dir.glob("checkpoint_*/")
    assert {p.name for p in checkpoint.iterdir()} == {"state.pt", "meta.json", "manifest.json"}
    assert (result.model_dir / "manifest.json").is_file()


@pytest.mark.parametrize(
    "loss",
    [
        {"kind": "cached_mnrl", "mini_batch_size": 2, "temperature": 0.05},
        {"kind": "infonce", "temperature": 0.05, "guide": {"model": "base"}},
    ],
    ids=["cached", "guided"],
)
def test_gathered_losses_with_hard_negatives_on_two_workers(
    ray_cluster, tiny_model, corpora, tmp_path, loss
):
    """Through DDP, candidates gathered: GradCache (mini-batches replayed in backward,
    gradients synchronized once) and GISTEmbed (the guide's view gathered with them)."""
    from orchestrator import run
    from tests.conftest import tiny_spec_dict

    spec = tiny_spec_dict(tiny_model, corpora, tmp_path)
    for source in spec["data"]["sources"].values():
        source["columns"]["negatives"] = ["wrong"]
    spec["loss"] = loss
    spec["train"].update(max_steps=2)
    result = run(spec)
    assert result.summary.steps == 2
    # 2 workers x 4 queries, each with a positive and a hard negative, gathered: 2*8 - 1.
    assert result.summary.negatives_per_query == 15
    assert result.finetuned["ndcg@10"] != result.baseline["ndcg@10"]


def test_labeled_pairs_train_and_are_judged_on_roc_auc(ray_cluster, tiny_model, corpora, tmp_path):
    """Labeled pairs → online contrastive loss; the verdict is the held-out pairs' ROC AUC."""
    from orchestrator import run
    from tests.conftest import pairs, tiny_spec_dict, write_jsonl

    def labeled(seed: int, n: int) -> list[dict]:
        return [
            {"a": r["question"], "b": r[column], "y": int(column == "answer")}
            for r in pairs(seed, n)
            for column in ("answer", "wrong")
        ]

    columns = {"anchor": "a", "positive": "b", "label": "y"}
    spec = tiny_spec_dict(tiny_model, corpora, tmp_path)
    spec["data"] = {
        "sources": {
            "labeled": {
                "format": "jsonl",
                "path": str(write_jsonl(tmp_path / "train.jsonl", labeled(11, 48))),
                "columns": columns,
            }
        },
        "eval_sets": {
            "labels": {
                "kind": "labeled_pairs",
                "path": str(write_jsonl(tmp_path / "heldout.jsonl", labeled(12, 24))),
                "columns": columns,
            }
        },
    }
    spec["loss"] = {"kind": "online_contrastive", "margin": 0.5}
    spec["eval"] = {"main_metric": "labels/roc_auc"}
    spec["train"].update(max_steps=3, lr=5e-3)
    spec["scaling"] = {"num_workers": 1, "cpus_per_worker": 1}
    result = run(spec)
    assert result.summary.verdict.metric == "labels/roc_auc"
    assert result.summary.negatives_per_query == 0
    for metrics in (result.baseline, result.finetuned):
        assert 0.0 <= metrics["labels/roc_auc"] <= 1.0 and "ndcg@10" not in metrics
    card = (result.model_dir / "README.md").read_text()
    assert "| labels/roc_auc |" in card


def test_a_later_stage_names_the_earlier_stages_spec_as_its_base(first_run, tmp_path):
    """`model.base: spec:<stage 1>` resolves to the model that spec's run exported."""
    import yaml

    from orchestrator.assets import resolve_model
    from orchestrator.preflight import preflight
    from orchestrator.spec import SpecError, load_spec

    spec, result = first_run
    stage1 = tmp_path / "stage1.yaml"
    stage1.write_text(yaml.safe_dump(spec))
    assert resolve_model(f"spec:{stage1}") == str(result.model_dir.resolve())
    preflight(load_spec(dict(spec, model={**spec["model"], "base": f"spec:{stage1}"})))

    not_run = tmp_path / "not-run.yaml"
    not_run.write_text(yaml.safe_dump(dict(spec, name="never-run")))
    stage2 = load_spec(dict(spec, model={**spec["model"], "base": f"spec:{not_run}"}))
    with pytest.raises(
        SpecError, match=rf"model.base: .*run `python -m orchestrator run {not_run}`"
    ):
        preflight(stage2)
