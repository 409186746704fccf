"""`comedian evaluate` vs the official SoccerNet scorer, as whole processes (start-up included).

Writes ``--games`` (default 100) synthetic games to a temporary folder: ~60 labels per half with
SoccerNet-v2's class mix (~12% "not shown"), and ~10,000 predictions per game in the official
``results_spotting.json`` format (most of them low-confidence background, some near the labels).
Then runs, one after the other, ``python -m comedian.cli evaluate`` and a Python process calling
``SoccerNet.Evaluation.ActionSpotting.evaluate``, both with ``--metric`` (default tight), prints
both wall times and their ratio, and checks that the two results agree to 1e-9.

    python bench/bench_scoring.py [--games 100] [--predictions-per-game 10000] [--metric tight]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comedian.data.soccernet import SOCCERNET_V2_CLASSES  # noqa: E402
from comedian.scoring import RESULT_KEYS  # noqa: E402

#: Rough share of each class among SoccerNet-v2 labels (Ball out of play, Throw-in, Foul lead).
CLASS_SHARE = np.array([1, 13, 16, 25, 20, 53, 64, 71, 290, 181, 113, 95, 21, 56, 20, 0.5, 0.5], dtype=float)

OFFICIAL = """
import json, sys
from SoccerNet.Evaluation.ActionSpotting import evaluate
from SoccerNet.Evaluation.utils import EVENT_DICTIONARY_V2
result = evaluate(SoccerNet_path=sys.argv[1], Predictions_path=sys.argv[2], split=None, version=2,
                  framerate=2, metric=sys.argv[3], dataset=None, EVENT_DICTIONARY=EVENT_DICTIONARY_V2)
json.dump({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.items()}, open(sys.argv[4], "w"))
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


def timed(command: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--predictions-per-game", type=int, default=10_000)
    parser.add_argument("--metric", default="tight")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_games(root, args.games, args.predictions_per_game)
        size = sum(p.stat().st_size for p in (root / "preds").rglob("*.json")) / 1e6
        print(f"{args.games} games, {args.predictions_per_game} predictions each ({size:.0f} MB of JSON), "
              f"metric {args.metric}")
        ours = timed([sys.executable, "-m", "comedian.cli", "evaluate", "--labels", str(root / "labels"),
                      "--predictions", str(root / "preds"), "--metric", args.metric, "--json", str(root / "ours.json")])
        print(f"comedian evaluate : {ours:8.2f} s")
        theirs = timed([sys.executable, "-c", OFFICIAL, str(root / "labels"), str(root / "preds"), args.metric,
                        str(root / "official.json")])
        print(f"official scorer   : {theirs:8.2f} s")
        print(f"speed-up          : {theirs / ours:8.1f} x")
        a, b = (json.loads((root / f).read_text()) for f in ("ours.json", "official.json"))
        worst = max(float(np.max(np.abs(np.asarray(a[k], float) - np.asarray(b[k], float)))) for k in RESULT_KEYS)
        print(f"a-mAP {100 * a['a_mAP']:.2f} % (official {100 * b['a_mAP']:.2f} %), "
              f"largest difference over all fields {worst:.1e}")


if __name__ == "__main__":
    main()
