"""Which merge weight would a run choose on validation, and how does that choice do on test?

For finished runs of ``bench/quality.py --seeds`` (the same spec, overrides and seeds), scores
every alpha on the validation split exactly as ``orchestrator/finalize.py`` does
(``guard_drop_of``, ``pick_alpha``: the best in-domain alpha whose guard drop stays within
``max_drop`` by one standard error) and prints the chosen alpha with its *test* figures from
``bench/seeds.jsonl``. No training: the runs must exist.

    .venv/bin/python bench/merge_choice.py experiments/quickstart.yaml --seeds 42 43 44 \\
        --alphas 0.7 0.6 0.5 0.4 0.3 [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--alphas", type=float, nargs="+", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds-file", type=Path, default=Path(__file__).with_name("seeds.jsonl"))
    args = parser.parse_args()

    import torch

    from orchestrator.assets import resolve_model
    from orchestrator.evaluation import evaluate_split
    from orchestrator.finalize import guard_drop_of, pick_alpha
    from orchestrator.layout import run_location
    from orchestrator.modeling import interpolated, load_encoder
    from orchestrator.spec import load_spec

    spec = load_spec(args.spec, args.set)
    main_metric, guard = spec.eval.main_metric, spec.eval.guard
    torch.set_num_threads(math.ceil(spec.scaling.cpus_per_worker))
    base_model = load_encoder(resolve_model(spec.model.base), spec.model).eval()
    base_state = {k: v.clone() for k, v in base_model.state_dict().items()}
    base = evaluate_split(base_model, spec, "validation")
    tested = [json.loads(line) for line in args.seeds_file.read_text().splitlines()]
    for seed in args.seeds:
        raw = spec.model_dump(mode="json", exclude={"merge"})
        raw["train"]["seed"] = seed
        run = run_location(load_spec(raw)).path
        model_dir = json.loads((run / "summary.json").read_text())["model_uri"]  # or .rejected
        tuned = load_encoder(model_dir, spec.model).eval()
        tuned_state = {k: v.clone() for k, v in tuned.state_dict().items()}
        rows = []
        for alpha in args.alphas:
            tuned.load_state_dict(interpolated(base_state, tuned_state, alpha))
            figures = evaluate_split(tuned, spec, "validation")
            rows.append({"alpha": alpha, main_metric: figures.metrics[main_metric]})
            rows[-1].update(guard_drop_of(base, figures, guard.metric_key))
        chosen = pick_alpha(rows, main_metric, guard.max_drop)
        on_test = next(
            r
            for r in reversed(tested)
            if r.get("seed") == seed
            and r.get("alpha") == chosen["alpha"]
            and r.get("overrides") == args.set
        )
        for row in rows:
            print(
                f"seed {seed} alpha {row['alpha']}: validation {main_metric} "
                f"{row[main_metric]:.4f}, guard drop {row['guard_drop']:+.4f} "
                f"± {row['guard_drop_se']:.4f}"
            )
        print(
            f"seed {seed}: chosen {chosen['alpha']}; on test {main_metric} "
            f"{on_test['verdict']['delta']:+.4f}, guard {on_test['guard']['delta']:+.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
