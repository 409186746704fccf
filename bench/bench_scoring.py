"""`comedian evaluate` vs the official SoccerNet scorer, as whole processes (start-up included).

Writes ``--games`` (default 100) synthetic games to a temporary folder: ~60 labels per half with
SoccerNet-v2's class mix (~12% "not shown"), and ~10,000 predictions per game in the official
``results_spotting.json`` format (most of them low-confidence background, some near the labels).
Then runs, one after the other, ``python -m comedian.cli evaluate`` and a Python process calling
``SoccerNet.Evaluation.ActionSpotting.evaluate``, both with ``--metric`` (default tight), prints
both wall times (and CPU times: on a shared machine the CPU ratio is the steadier one) and their
ratios, checks that the two results agree to 1e-9, and prints where the time goes:

* ours: start-up (a process importing what ``comedian evaluate`` imports), then, in this process,
  JSON parsing (files -> tables), grid (placing entries, later ones winning), matching (all
  tolerances) and curves (precision/recall, AP, averaging);
* official: start-up (its imports), JSON parsing (its ``json.load`` calls) and the rest.

The breakdowns are CPU seconds. ``--json`` prints one JSON object instead (keys: games,
predictions_per_game, metric, ours_s, official_s, speedup, ours_cpu_s, official_cpu_s,
speedup_cpu, max_abs_diff, a_mAP, breakdown_ours_s, breakdown_official_s).

    python bench/bench_scoring.py [--games 100] [--predictions-per-game 10000] [--metric tight] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comedian.data.soccernet import SOCCERNET_V2_CLASSES  # noqa: E402
from comedian import scoring  # noqa: E402
from comedian.scoring import RESULT_KEYS  # noqa: E402

#: Rough share of each class among SoccerNet-v2 labels (Ball out of play, Throw-in, Foul lead).
CLASS_SHARE = np.array([1, 13, 16, 25, 20, 53, 64, 71, 290, 181, 113, 95, 21, 56, 20, 0.5, 0.5], dtype=float)

OFFICIAL = """
import json, sys, time
cpu = time.process_time
start = cpu()
from SoccerNet.Evaluation.ActionSpotting import evaluate
from SoccerNet.Evaluation.utils import EVENT_DICTIONARY_V2
imports = cpu() - start
parse = 0.0
json_load = json.load
def timed_load(*args, **kwargs):
    global parse
    t = cpu()
    try:
        return json_load(*args, **kwargs)
    finally:
        parse += cpu() - t
json.load = timed_load
t = cpu()
result = evaluate(SoccerNet_path=sys.argv[1], Predictions_path=sys.argv[2], split=None, version=2,
                  framerate=2, metric=sys.argv[3], dataset=None, EVENT_DICTIONARY=EVENT_DICTIONARY_V2)
rest = cpu() - t - parse
json.load = json_load
json.dump({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.items()}, open(sys.argv[4], "w"))
json.dump({"imports": imports, "json_parsing": parse, "matching_and_curves": rest}, open(sys.argv[5], "w"))
"""

def game_time(half: int, ms: int) -> str:
    return f"{half} - {ms // 60000}:{ms // 1000 % 60:02d}"


def write_games(root: Path, n_games: int, n_predictions: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    share = CLASS_SHARE / CLASS_SHARE.sum()
    for g in range(n_games):
        game = f"league/2020-2021/2020-01-{g:03d} - 20-00 Home {g} - 0 Away"
        annotations, predictions = [], []
        for half in (1, 2):
            half_ms = int(rng.integers(45, 50) * 60_000)
            n_labels = int(rng.poisson(60))
            times = np.sort(rng.integers(0, half_ms, n_labels))
            classes = rng.choice(17, n_labels, p=share)
            for ms, c in zip(times.tolist(), classes.tolist()):
                annotations.append({"gameTime": game_time(half, ms), "label": SOCCERNET_V2_CLASSES[c],
                                    "position": str(ms), "team": "home",
                                    "visibility": "not shown" if rng.random() < 0.12 else "visible"})
            n_near = min(n_labels, n_predictions // 2)
            near_ms = np.clip(times[:n_near] + rng.normal(0, 2000, n_near).astype(int), 0, half_ms)
            near = zip(near_ms.tolist(), classes[:n_near].tolist(), rng.beta(5, 2, n_near).tolist())
            n_background = n_predictions // 2 - n_near
            background = zip(rng.integers(0, half_ms, n_background).tolist(),
                             rng.choice(17, n_background, p=share).tolist(),
                             rng.beta(1, 8, n_background).tolist())
            for ms, c, conf in [*near, *background]:
                predictions.append({"gameTime": game_time(half, ms), "label": SOCCERNET_V2_CLASSES[c],
                                    "position": str(ms), "half": str(half), "confidence": f"{conf:.4f}"})
        for sub, name, doc in (("labels", "Labels-v2.json", {"annotations": annotations}),
                               ("preds", "results_spotting.json", {"predictions": predictions})):
            (root / sub / game).mkdir(parents=True, exist_ok=True)
            (root / sub / game / name).write_text(json.dumps({"UrlLocal": game, **doc}))


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a child process."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def breakdown_ours(root: Path, metric: str) -> dict[str, float]:
    """CPU seconds of each part of ``comedian evaluate`` (start-up in a child process)."""
    cpu = time.process_time
    startup = timed([sys.executable, "-c", "import comedian.cli, comedian.scoring, comedian.data.soccernet, msgspec"])[1]
    games = scoring.find_games(root / "labels")
    t = cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels, predictions = scoring.read_tables(root / "labels", root / "preds", games, SOCCERNET_V2_CLASSES)
    parse = cpu() - t
    t = cpu()
    grid = scoring._Grid(labels, predictions, len(SOCCERNET_V2_CLASSES), scoring.FRAMERATE)
    place = cpu() - t
    t = cpu()
    scoring._evaluate(grid, scoring.METRIC_DELTAS_S[metric])
    evaluate = cpu() - t
    t = cpu()
    for delta in scoring.METRIC_DELTAS_S[metric]:
        grid.match(delta * scoring.FRAMERATE)
    matching = cpu() - t
    return {"startup": startup, "json_parsing": parse, "grid": place, "matching": matching,
            "curves": max(evaluate - matching, 0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--predictions-per-game", type=int, default=10_000)
    parser.add_argument("--metric", default="tight")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_games(root, args.games, args.predictions_per_game)
        size = sum(p.stat().st_size for p in (root / "preds").rglob("*.json")) / 1e6
        ours, ours_cpu = timed([sys.executable, "-m", "comedian.cli", "evaluate", "--labels", str(root / "labels"),
                                "--predictions", str(root / "preds"), "--metric", args.metric,
                                "--json", str(root / "ours.json")])
        theirs, theirs_cpu = timed([sys.executable, "-c", OFFICIAL, str(root / "labels"), str(root / "preds"),
                                    args.metric, str(root / "official.json"), str(root / "official_times.json")])
        a, b = (json.loads((root / f).read_text()) for f in ("ours.json", "official.json"))
        worst = max(float(np.max(np.abs(np.asarray(a[k], float) - np.asarray(b[k], float)))) for k in RESULT_KEYS)
        ours_parts = breakdown_ours(root, args.metric)
        official_parts = json.loads((root / "official_times.json").read_text())
    report = {
        "games": args.games, "predictions_per_game": args.predictions_per_game, "metric": args.metric,
        "ours_s": ours, "official_s": theirs, "speedup": theirs / ours,
        "ours_cpu_s": ours_cpu, "official_cpu_s": theirs_cpu, "speedup_cpu": theirs_cpu / ours_cpu,
        "max_abs_diff": worst, "a_mAP": a["a_mAP"],
        "breakdown_ours_s": ours_parts, "breakdown_official_s": official_parts,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.games} games, {args.predictions_per_game} predictions each ({size:.0f} MB of JSON), "
          f"metric {args.metric}")
    print(f"{'':18} {'wall s':>8} {'CPU s':>8}")
    print(f"{'comedian evaluate':18} {ours:8.2f} {ours_cpu:8.2f}")
    print(f"{'official scorer':18} {theirs:8.2f} {theirs_cpu:8.2f}")
    print(f"{'speed-up':18} {theirs / ours:7.1f}x {theirs_cpu / ours_cpu:7.1f}x")
    print(f"a-mAP {100 * a['a_mAP']:.2f} % (official {100 * b['a_mAP']:.2f} %), "
          f"largest difference over all fields {worst:.1e}")
    for name, parts in (("ours", ours_parts), ("official", official_parts)):
        print(f"where the time goes, {name} (CPU s): "
              + ", ".join(f"{key.replace('_', ' ')} {value:.2f}" for key, value in parts.items()))


if __name__ == "__main__":
    main()
