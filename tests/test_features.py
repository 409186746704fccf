"""The Baidu bank: streaming standardisation + PCA equals an in-memory fit; bad feature files."""

import h5py
import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from comedian.data import features
from comedian.data.soccernet import baidu_path, game_slug
from comedian.errors import InputError

DIM = 96


def _write_tree(root, games, rows=40, dim=DIM, seed=0):
    """Feature files with correlated columns, a large offset and unequal scales (like Baidu's)."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((12, dim))
    for g in games:
        for half in (1, 2):
            x = rng.standard_normal((rows, 12)) @ mixing + 0.3 * rng.standard_normal((rows, dim))
            x = 50.0 + x * np.linspace(0.1, 5.0, dim)
            x[:, 3] = 7.0  # a constant dimension
            path = baidu_path(root, g, half)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, x.astype(np.float32))


def _list(tmp_path, name, games):
    path = tmp_path / f"{name}.txt"
    path.write_text("\n".join(games) + "\n")
    return path


TRAIN = ["lg/2020-2021/2020-01-01 - 20-00 A 1 - 0 B", "lg/2020-2021/2020-01-08 - 20-00 C 0 - 0 D"]
TEST = ["lg/2020-2021/2020-02-01 - 20-00 E 2 - 2 F"]


@pytest.mark.parametrize("rows", [40, 15], ids=["gram-path", "rows-path"])
def test_streaming_fit_equals_in_memory_pca(tmp_path, rows):
    """40 rows per half: 160 rows > 96 dims (Gram matrix); 15 rows: 60 rows < 96 dims (thin SVD)."""
    _write_tree(tmp_path, TRAIN, rows=rows)
    paths = [baidu_path(tmp_path, g, h) for g in TRAIN for h in (1, 2)]
    model = features.fit_pca(paths, 20, DIM)
    x = np.concatenate([np.load(p).astype(np.float64) for p in paths])
    scaler = StandardScaler().fit(x)
    reference = PCA(20, svd_solver="full").fit(scaler.transform(x))
    np.testing.assert_allclose(model.mean, scaler.mean_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(model.scale, scaler.scale_, rtol=1e-6)
    np.testing.assert_allclose(model.explained_variance, reference.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(model.explained_variance_ratio, reference.explained_variance_ratio_, rtol=1e-6)
    # Same axes up to sign, hence the same projection up to sign per component.
    cos = np.abs(np.sum(model.components * reference.components_, axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-6)
    projected = model.project(np.load(paths[0]))
    expected = reference.transform(scaler.transform(np.load(paths[0]).astype(np.float64)))
    np.testing.assert_allclose(np.abs(projected), np.abs(expected), rtol=1e-4, atol=1e-4)


def test_fit_is_independent_of_chunking(tmp_path):
    _write_tree(tmp_path, TRAIN)
    paths = [baidu_path(tmp_path, g, h) for g in TRAIN for h in (1, 2)]
    whole = features.GramAccumulator(DIM)
    chunked = features.GramAccumulator(DIM)
    for p in paths:
        whole.add(np.load(p))
        chunked.add(np.load(p), chunk_rows=7)
    assert whole.rows is None and whole.gram is not None
    a, b = whole.fit(10), chunked.fit(10)
    np.testing.assert_allclose(a.explained_variance, b.explained_variance, rtol=1e-9)
    np.testing.assert_allclose(a.components, b.components, atol=1e-9)


def test_bank_file_layout(tmp_path):
    _write_tree(tmp_path, TRAIN + TEST)
    out = tmp_path / "bank.h5"
    model = features.fit_pca([baidu_path(tmp_path, g, h) for g in TRAIN for h in (1, 2)], 16, DIM)
    halves = [(g, h, baidu_path(tmp_path, g, h)) for g in TRAIN + TEST for h in (1, 2)]
    features.write_bank(out, model, halves, {}, 2.0)
    with h5py.File(out) as h5:
        assert h5["components"].shape == (16, DIM)
        assert h5["mean"].shape == h5["scale"].shape == (DIM,)
        assert h5["explained_variance"].shape == (16,)
    bank = features.read_bank(out, TEST[0], 2)
    assert bank.shape == (40, 16) and bank.dtype == np.float32
    np.testing.assert_allclose(bank, model.project(np.load(baidu_path(tmp_path, TEST[0], 2))))
    with pytest.raises(InputError, match="no features"):
        features.read_bank(out, "lg/2020-2021/unknown", 1)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((10, DIM + 1), np.float32), r"shape \(10, 97\)"),
        (np.zeros((10,), np.float32), "expected"),
        (np.zeros((0, DIM), np.float32), "no rows"),
        (np.zeros((10, DIM), np.int32), "dtype"),
    ],
)
def test_bad_feature_files_name_the_file(tmp_path, array, message):
    path = tmp_path / "1_baidu_soccer_embeddings.npy"
    np.save(path, array)
    with pytest.raises(InputError, match=message) as err:
        features.load_features(path, DIM)
    assert str(path) in str(err.value)


def test_missing_and_non_finite_features(tmp_path):
    with pytest.raises(InputError, match="missing"):
        features.load_features(tmp_path / "nope.npy", DIM)
    path = tmp_path / "x.npy"
    x = np.ones((10, DIM), np.float32)
    x[4, 2] = np.nan
    np.save(path, x)
    with pytest.raises(InputError, match="non-finite"):
        features.fit_pca([path], 2, DIM)


def test_length_must_match_the_video(tmp_path):
    _write_tree(tmp_path, TRAIN)
    model = features.fit_pca([baidu_path(tmp_path, g, h) for g in TRAIN for h in (1, 2)], 4, DIM)
    halves = [(TRAIN[0], 1, baidu_path(tmp_path, TRAIN[0], 1))]
    out = tmp_path / "bank.h5"
    with pytest.raises(InputError, match=r"40 rows .* lasts 45.0 s"):
        features.write_bank(out, model, halves, {(TRAIN[0], 1): 45.0}, 2.0)
    assert not out.exists() and not list(tmp_path.glob(".bank.h5*"))
    features.write_bank(out, model, halves, {(TRAIN[0], 1): 41.5}, 2.0)
    assert out.exists()


def test_cli_writes_every_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    _write_tree(root, TRAIN + TEST)
    out = tmp_path / "bank.h5"
    rc = features.main([
        "--root", str(root), "--train", str(_list(tmp_path, "train", TRAIN)),
        "--split", str(_list(tmp_path, "test", TEST)), "--output", str(out),
        "--dims", "8", "--feature-dim", str(DIM),
    ])
    assert rc == 0
    with h5py.File(out) as h5:
        assert sorted(h5["halves"]) == sorted({game_slug(g) for g in TRAIN + TEST})
        assert h5.attrs["n_rows_fit"] == 2 * 2 * 40


def test_non_finite_features_outside_the_train_split_are_refused(tmp_path):
    _write_tree(tmp_path, TRAIN + TEST)
    model = features.fit_pca([baidu_path(tmp_path, g, h) for g in TRAIN for h in (1, 2)], 4, DIM)
    bad = baidu_path(tmp_path, TEST[0], 2)  # a test half: never part of the fit
    x = np.load(bad)
    x[7, 3] = np.nan
    x[9, 0] = np.inf
    np.save(bad, x)
    out = tmp_path / "bank.h5"
    halves = [(g, h, baidu_path(tmp_path, g, h)) for g in TRAIN + TEST for h in (1, 2)]
    with pytest.raises(InputError, match=r"non-finite value in the features \(2 rows, first row 7\)") as err:
        features.write_bank(out, model, halves, {}, 2.0)
    assert str(bad) in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".bank.h5*"))  # no partial bank
