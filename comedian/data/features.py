"""The teacher bank of step 2: Baidu features, standardised per dimension and reduced by PCA.

SoccerNet ships Baidu features as ``<game>/<half>_baidu_soccer_embeddings.npy``: float32 (T, 8576),
row i = second i of the half. This stage fits a standardisation + PCA on the train split and
writes every half of every split, projected, into ONE HDF5 file:

    /mean, /scale            (D,) float64   per-dimension mean and standard deviation (ddof 0;
                                             a constant dimension gets scale 1), train split
    /components              (K, D) float64 principal axes of the standardised features
    /explained_variance      (K,) float64   variance along each axis (ddof 1, as sklearn's PCA)
    /explained_variance_ratio (K,) float64
    /halves/<slug>/<half>    (T, K) float32 projected features, row i = second i; attrs game, half

The fit is exact, not approximate, and its memory does not grow with the data: one streaming pass
accumulates the row count, the sum and the Gram matrix of the features (float64, D x D: 0.6 GB at
D = 8576), shifted by the first half's mean for numerical stability; the standardised covariance
follows, and its top K eigenvectors (``scipy.linalg.eigh``) are the principal axes. With fewer rows
than dimensions, the rows themselves are kept instead (no larger) and a thin SVD gives the same axes. It equals
sklearn's in-memory ``PCA`` fit on the standardised train rows (up to the sign of each axis, fixed
here so that each axis's largest-magnitude loading is positive).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from comedian.data.soccernet import HALVES, baidu_path, game_slug, read_game_list, slug_table
from comedian.errors import InputError
from comedian.io import atomic_h5

BAIDU_DIM = 8576


@dataclass(frozen=True)
class PCAModel:
    """Standardisation + PCA: ``project(x) = ((x - mean) / scale) @ components.T``."""

    mean: np.ndarray  # (D,) float64
    scale: np.ndarray  # (D,) float64
    components: np.ndarray  # (K, D) float64
    explained_variance: np.ndarray  # (K,) float64
    explained_variance_ratio: np.ndarray  # (K,) float64
    n_rows: int

    def project(self, features: np.ndarray, chunk_rows: int = 4096) -> np.ndarray:
        """(T, D) features -> (T, K) float32, in chunks of rows to bound memory."""
        out = np.empty((features.shape[0], self.components.shape[0]), dtype=np.float32)
        for start in range(0, features.shape[0], chunk_rows):
            rows = np.asarray(features[start : start + chunk_rows], dtype=np.float64)
            out[start : start + chunk_rows] = ((rows - self.mean) / self.scale) @ self.components.T
        return out


def load_features(path: Path, dim: int = BAIDU_DIM) -> np.ndarray:
    """Memory-map a Baidu ``.npy`` file, checking it is a 2-D float array of ``dim`` columns."""
    try:
        array = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise InputError(f"{path}: features file is missing") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable .npy features file ({err})") from None
    if array.ndim != 2 or array.shape[1] != dim:
        raise InputError(f"{path}: shape {array.shape} — expected (T, {dim}), one row per second")
    if array.dtype.kind != "f":
        raise InputError(f"{path}: dtype {array.dtype} — expected floating point")
    if array.shape[0] == 0:
        raise InputError(f"{path}: no rows")
    return array


class GramAccumulator:
    """Streaming PCA statistics of rows shifted by a constant (float64), exact, in bounded memory.

    While at most D rows have been seen they are kept as they are (at most D x D values); past D rows
    they are folded into the D x D Gram matrix and dropped. So memory never exceeds about two D x D
    float64 arrays, however many rows stream through, and a small fit (fewer rows than dimensions,
    like the demo's) takes a thin SVD of the rows instead of an O(D^3) eigensolver.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(dim)
        self.rows: list[np.ndarray] | None = []
        self.gram: np.ndarray | None = None

    def add(self, rows: np.ndarray, chunk_rows: int = 2048) -> None:
        """Accumulate (N, D) rows, ``chunk_rows`` at a time."""
        if self.shift is None:
            self.shift = np.asarray(rows, dtype=np.float64).mean(axis=0)
        for start in range(0, rows.shape[0], chunk_rows):
            chunk = np.asarray(rows[start : start + chunk_rows], dtype=np.float64) - self.shift
            if not np.isfinite(chunk).all():
                raise ValueError("non-finite value")
            self.n += chunk.shape[0]
            self.sum += chunk.sum(axis=0)
            if self.rows is None:
                self.gram += chunk.T @ chunk
                continue
            self.rows.append(chunk)
            if self.n > self.dim:
                self.gram = sum(c.T @ c for c in self.rows)
                self.rows = None

    def fit(self, n_components: int) -> PCAModel:
        """Standardise (ddof 0) and take the top ``n_components`` axes of the covariance (ddof 1)."""
        n, dim = self.n, self.dim
        if n < 2:
            raise InputError(f"PCA needs at least 2 rows of train features, got {n}")
        if not 0 < n_components <= min(dim, n):
            raise InputError(f"pca.dims = {n_components} must be in 1..min(feature dim {dim}, train rows {n})")
        mean_shifted = self.sum / n
        if self.rows is not None:
            centred = np.concatenate(self.rows) - mean_shifted
            scale = _scale(np.einsum("ij,ij->j", centred, centred) / n)
            _, singular, axes = np.linalg.svd(centred / scale, full_matrices=False)
            values, vectors = singular[:n_components] ** 2 / (n - 1), axes[:n_components]
            total = float(np.sum(singular**2)) / (n - 1)
        else:
            from scipy.linalg import eigh

            scatter = self.gram - n * np.outer(mean_shifted, mean_shifted)  # sum of (x - mean)(x - mean)^T
            scale = _scale(np.diag(scatter) / n)
            cov = scatter / np.outer(scale, scale) / (n - 1)
            # Dense and exact, O(D^3): ~15 s at D = 8576 on 2 idle cores, once per fit.
            values, vectors = eigh(cov, subset_by_index=[dim - n_components, dim - 1])
            order = np.argsort(values)[::-1]
            values, vectors = np.clip(values[order], 0.0, None), vectors[:, order].T
            total = float(np.trace(cov))
        signs = np.sign(vectors[np.arange(n_components), np.abs(vectors).argmax(axis=1)])
        vectors = vectors * signs[:, None]
        return PCAModel(
            mean=self.shift + mean_shifted,
            scale=scale,
            components=vectors,
            explained_variance=values,
            explained_variance_ratio=values / total if total > 0 else np.zeros_like(values),
            n_rows=n,
        )


def _scale(variance: np.ndarray) -> np.ndarray:
    """Standard deviations from variances; a constant dimension gets 1 (as sklearn's StandardScaler)."""
    scale = np.sqrt(np.clip(variance, 0.0, None))
    scale[scale < 1e-12 * max(1.0, scale.max())] = 1.0
    return scale


def fit_pca(paths: list[Path], n_components: int, dim: int = BAIDU_DIM) -> PCAModel:
    """Fit standardisation + PCA on the rows of several feature files, in bounded memory."""
    acc = GramAccumulator(dim)
    for path in paths:
        try:
            acc.add(load_features(path, dim))
        except ValueError as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"{path}: {err} in the features") from None
    return acc.fit(n_components)


def check_length(path: Path, n_rows: int, duration_s: float, tolerance_s: float) -> None:
    """Row i is second i: the row count must match the video's duration to ``tolerance_s``."""
    if abs(n_rows - duration_s) > tolerance_s:
        raise InputError(
            f"{path}: {n_rows} rows (one per second) but the video lasts {duration_s:.1f} s "
            f"(tolerance {tolerance_s} s)"
        )


def write_bank(
    output: Path, model: PCAModel, halves: list[tuple[str, int, Path]], durations: dict[tuple[str, int], float],
    tolerance_s: float,
) -> None:
    """Project every half and write the bank file atomically (layout in the module docstring)."""
    with atomic_h5(output) as h5:
        for name in ("mean", "scale", "components", "explained_variance", "explained_variance_ratio"):
            h5.create_dataset(name, data=getattr(model, name))
        h5.attrs["n_rows_fit"] = model.n_rows
        h5.attrs["dims"] = model.components.shape[0]
        for game, half, path in halves:
            features = load_features(path, model.mean.shape[0])
            if (game, half) in durations:
                check_length(path, features.shape[0], durations[(game, half)], tolerance_s)
            projected = model.project(features)
            bad = np.flatnonzero(~np.isfinite(projected).all(axis=1))
            if bad.size:  # a NaN/inf input row makes its projected row non-finite: refuse, as for the fit rows
                raise InputError(f"{path}: non-finite value in the features ({bad.size} rows, first row {bad[0]})")
            ds = h5.create_dataset(f"halves/{game_slug(game)}/{half}", data=projected)
            ds.attrs["game"] = game
            ds.attrs["half"] = half


def read_bank(path: str | Path, game: str, half: int) -> np.ndarray:
    """The projected (T, K) float32 features of one half from a bank file."""
    with h5py.File(path, "r") as h5:
        key = f"halves/{game_slug(game)}/{half}"
        if key not in h5:
            raise InputError(f"{path}: no features for {game!r} half {half}")
        return h5[key][()]


def _frame_durations(frames_dir: Path | None, games: list[str]) -> dict[tuple[str, int], float]:
    """Video durations (s) of the halves whose packed-frame file exists under ``frames_dir``."""
    if frames_dir is None:
        return {}
    from comedian.data.frames import PackedFrames

    durations = {}
    for game in games:
        for half in HALVES:
            path = frames_dir / game_slug(game) / f"{half}.h5"
            if path.exists():
                durations[(game, half)] = PackedFrames(path).duration_s
    return durations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="comedian pca",
        description="Standardise Baidu features and reduce them by PCA fitted on the train split; "
        "write every half of every split into one HDF5 bank.",
    )
    parser.add_argument("--root", type=Path, required=True, help="SoccerNet-v2 data root")
    parser.add_argument("--train", type=Path, required=True, help="train split list (fit on these games)")
    parser.add_argument("--split", type=Path, action="append", default=[], help="other split lists to transform")
    parser.add_argument("--output", type=Path, required=True, help="output HDF5 bank")
    parser.add_argument("--dims", type=int, default=512, help="principal components kept (default 512)")
    parser.add_argument("--feature-dim", type=int, default=BAIDU_DIM, help="feature width (default 8576)")
    parser.add_argument("--frames-dir", type=Path, help="packed frames, to check feature lengths against videos")
    parser.add_argument("--length-tolerance-s", type=float, default=2.0, help="allowed |rows - video seconds|")
    args = parser.parse_args(argv)

    from comedian.tracking import stage_run

    train = read_game_list(args.train)
    games = list(dict.fromkeys(train + [g for s in args.split for g in read_game_list(s)]))
    slug_table(games)
    halves = [(g, h, baidu_path(args.root, g, h)) for g in games for h in HALVES]
    params = {"dims": args.dims, "feature_dim": args.feature_dim, "train_games": len(train), "games": len(games)}
    with stage_run("pca", params=params) as run:
        t0 = time.perf_counter()
        train_paths = [baidu_path(args.root, g, h) for g in train for h in HALVES]
        model = fit_pca(train_paths, args.dims, args.feature_dim)
        fit_s = time.perf_counter() - t0
        write_bank(args.output, model, halves, _frame_durations(args.frames_dir, games), args.length_tolerance_s)
        kept = float(model.explained_variance_ratio.sum())
        run.log_metrics({"explained_variance_kept": kept, "fit_rows": model.n_rows, "fit_s": fit_s,
                         "total_s": time.perf_counter() - t0})
    print(f"pca: {model.n_rows} train rows, {args.dims} components keep {100 * kept:.1f}% of the variance; "
          f"{len(halves)} halves -> {args.output}")
    return 0
