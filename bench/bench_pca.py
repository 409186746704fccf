"""PCA peak memory vs number of halves: the streaming fit stays flat, an in-memory fit grows.

Each measurement runs in a fresh process and reports its peak resident memory (ru_maxrss). The
feature width defaults to 2048 (not Baidu's 8576) so that the run takes a couple of minutes; the
streaming fit's memory is ~2 D^2 x 8 bytes once the train rows exceed D, whatever their number.

    python bench/bench_pca.py [--dim 2048] [--rows-per-half 300] [--halves 8 32 128]
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import resource, sys, time
from pathlib import Path
import numpy as np
mode, folder, dim, k = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
paths = sorted(folder.glob("*.npy"))
start = time.perf_counter()
if mode == "streaming":
    from comedian.data.features import fit_pca
    fit_pca(paths, k, dim)
else:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    x = np.concatenate([np.load(p) for p in paths]).astype(np.float64)
    PCA(k, svd_solver="covariance_eigh").fit(StandardScaler().fit_transform(x))
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def measure(mode: str, folder: Path, dim: int, k: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), str(dim), str(k)],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--components", type=int, default=256)
    parser.add_argument("--rows-per-half", type=int, default=300)
    parser.add_argument("--halves", type=int, nargs="+", default=[8, 32, 128])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        written = 0
        print(f"D = {args.dim}, {args.rows_per_half} rows per half, K = {args.components}")
        print(f"{'halves':>7} {'rows':>7} {'streaming MB':>13} {'in-memory MB':>13} {'ratio':>6} "
              f"{'streaming s':>12} {'in-memory s':>12}")
        first = None
        for halves in args.halves:
            while written < halves:
                x = rng.standard_normal((args.rows_per_half, args.dim)).astype(np.float32)
                np.save(folder / f"{written:05d}.npy", x)
                written += 1
            t_stream, m_stream = measure("streaming", folder, args.dim, args.components)
            t_mem, m_mem = measure("in-memory", folder, args.dim, args.components)
            first = first or m_stream
            print(f"{halves:>7} {halves * args.rows_per_half:>7} {m_stream:>13.0f} {m_mem:>13.0f} "
                  f"{m_mem / m_stream:>6.2f} {t_stream:>12.1f} {t_mem:>12.1f}")
        print(f"streaming peak at the most halves / at the fewest: {m_stream / first:.2f} (flat = 1.00)")


if __name__ == "__main__":
    main()
