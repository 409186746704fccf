"""A small synthetic SoccerNet-v2 tree, generated from a seed, for running the whole pipeline offline.

The tree has exactly the layout of the real data (see :mod:`comedian.data.soccernet`)::

    <root>/demo_league/<season>/<YYYY-MM-DD - HH-MM Home 2 - 1 Away>/
        1_224p.mkv, 2_224p.mkv                    H.264, 398x224, 25 fps, yuv420p
        Labels-v2.json                            the official schema, all 17 classes in every game
        1_baidu_soccer_embeddings.npy, 2_...npy   float32 (T, 8576), row i = second i of the half
    <splits_dir>/train.txt, valid.txt, test.txt   one game per line

Events are made learnable on both inputs:

- **video**: each class has its own glyph, a unique (colour, shape, screen cell) triple, drawn on
  every 25-fps frame within ``0.5 s + half a frame`` of the event, so every 2-fps frame that the
  fine-tuning targets call positive (within 0.5 s of the event) shows it, whichever of the two
  25-fps frames around a 2-fps time the extractor picks. The glyphs sit on a 3 x 6 grid of cells (cell ``c`` for class
  ``c``, row-major; the last cell stays empty) and are ~52 px, i.e. ~8 x 15 px after a resize to
  64 x 64. The background is a pitch texture that pans (a camera following play) plus per-frame noise.
  "Not shown" events get a smaller (x0.8), 70 %-opaque glyph.

  An extractor of 2-fps frames must take, for time k / 2 s, the 25-fps frame at (or just before) that
  time, e.g. ffmpeg ``-vf fps=2:round=up``; plain ``fps=2`` (round=near) picks the frame ~0.24 s
  later, which misaligns frames and labels by that much, on this tree as on real data.
- **Baidu features**: each class owns one direction of a random orthonormal basis of R^8576; an
  event adds ``EVENT_AMPLITUDE`` times that direction to the rows of the seconds around it (Gaussian
  in the distance from the row's centre, width 1 s), on top of i.i.d. unit Gaussian noise and a
  slowly varying low-rank background; every dimension then gets its own offset and scale, which a
  per-dimension standardisation undoes. The class signal survives standardisation + PCA to 512:
  on the default demo (720 training rows), the PCA keeps about half of each class direction, and
  nearest-class-mean on the L2-normalised PCA rows of valid/test events is ~100 % right.

Everything is deterministic given the seed: labels byte for byte; features too on one machine (the
class basis comes from a LAPACK QR); videos too, with the same ffmpeg binary and thread count (x264
and the Matroska muxer run in bit-exact mode). Each game's
content depends only on (seed, split, index in split), so adding test games changes no train game.

Times are seconds (floats) at every interface; label positions are integer milliseconds, as in
``Labels-v2.json``.
"""

from __future__ import annotations

import argparse
import colorsys
import datetime as dt
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comedian.data.soccernet import HALVES, SOCCERNET_V2_CLASSES, baidu_path, labels_path, video_path
from comedian.errors import InputError
from comedian.io import atomic_path

DEMO_LEAGUE = "demo_league"
#: The split lists written, as ``<splits_dir>/<split>.txt``.
DEMO_SPLITS: tuple[str, ...] = ("train", "valid", "test")

FRAME_WIDTH, FRAME_HEIGHT, FPS = 398, 224, 25
BAIDU_DIM = 8576

#: Wanted spacing between the events of a half (s); shrunk, down to MIN_EVENT_GAP_S, for short halves.
EVENT_GAP_S = 8.0
MIN_EVENT_GAP_S = 1.5
#: No event within this many seconds of either end of a half.
EDGE_MARGIN_S = 3.0
#: Share of the events labelled "not shown" (at least one per game).
NOT_SHOWN_RATE = 0.1
#: A glyph is drawn on the 25-fps frames within this many seconds of its event.
GLYPH_HALF_WIDTH_S = 0.5 + 0.5 / FPS

# Video appearance.
GRID_ROWS, GRID_COLS = 3, 6
GLYPH_SIZE = 52  # px, side of a visible event's glyph box
GLYPH_JITTER = 5  # px, random shift of a glyph inside its cell, per event
NOT_SHOWN_SCALE, NOT_SHOWN_ALPHA = 0.8, 0.7
NOISE_STD = 6.0  # grey levels, before compression
PAN_X, PAN_Y = 480, 32  # px, camera travel over the pitch texture
DEFAULT_CRF = 28

# Feature structure (units: the noise standard deviation, before the per-dimension scaling).
EVENT_AMPLITUDE = 40.0
EVENT_WIDTH_S = 1.0
NOT_SHOWN_WEIGHT = 0.6  # a "not shown" event's share of EVENT_AMPLITUDE
BACKGROUND_RANK = 8
BACKGROUND_AMPLITUDE = 4.0

_TEAMS = (
    "Northbridge", "Riverside Athletic", "Ashford Town", "Port Elmsley", "Kingsmere United",
    "Westhaven City", "Oakridge Rovers", "Millbrook Wanderers", "Eastfield Albion", "Harrow Green",
    "Stonebury", "Lakeview Rangers", "Bramford Athletic", "Cresthill United", "Dunmore City",
    "Glenwood Town", "Hollin Park", "Marshgate", "Redcliffe Rovers", "Sutton Vale",
)  # fmt: skip
_KICKOFFS = ("13-30", "16-00", "18-00", "19-45", "20-45")
_SPLIT_IDS = {split: k for k, split in enumerate(DEMO_SPLITS)}
_STREAM_NAME, _STREAM_LABELS, _STREAM_FEATURES, _STREAM_VIDEO, _STREAM_GLYPHS = 0, 1, 2, 3, 4


# --------------------------------------------------------------------------------------------------
# Games and files (cheap: no generation; the Snakefile calls these at parse time)


@dataclass(frozen=True)
class DemoGame:
    """One synthetic game: its place in the splits and what its name says."""

    split: str
    index: int  # position in its split
    date: dt.date
    kickoff: str  # "HH-MM"
    home: str
    away: str
    home_goals: int
    away_goals: int

    @property
    def season(self) -> str:
        year = self.date.year if self.date.month >= 7 else self.date.year - 1
        return f"{year}-{year + 1}"

    def rng(self, seed: int, stream: int, *key: int) -> np.random.Generator:
        """This game's generator for one purpose (name, labels, features, video, ...), e.g. per half."""
        return _rng(seed, _SPLIT_IDS[self.split], self.index, stream, *key)

    @property
    def name(self) -> str:
        """``<league>/<season>/<YYYY-MM-DD - HH-MM Home g - g Away>``, as SoccerNet names games."""
        folder = f"{self.date:%Y-%m-%d} - {self.kickoff} {self.home} {self.home_goals} - {self.away_goals} {self.away}"
        return f"{DEMO_LEAGUE}/{self.season}/{folder}"


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent generator per (seed, key): key = (stream,) or (split id, game index, stream, ...)."""
    return np.random.default_rng([seed, *key])


def _check_counts(seed: int, n_train: int, n_valid: int, n_test: int) -> None:
    if seed < 0:
        raise InputError(f"seed (--seed) = {seed} must be >= 0")
    for name, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        if n < 0:
            raise InputError(f"number of {name} games (--{name}-games) = {n} must be >= 0")
    if n_train + n_valid + n_test == 0:
        raise InputError("at least one game is needed (--train-games, --valid-games, --test-games are all 0)")


def demo_game_specs(seed: int, n_train: int = 3, n_valid: int = 1, n_test: int = 1) -> list[DemoGame]:
    """The games of the demo tree, train then valid then test; each depends on (seed, split, index).

    Dates are distinct (game ``j`` of split ``k`` plays on day ``3 j + k`` of the season, which
    starts on 1 August and lasts 300 days), so names never collide.
    """
    _check_counts(seed, n_train, n_valid, n_test)
    games = []
    for split, count in zip(DEMO_SPLITS, (n_train, n_valid, n_test)):
        for index in range(count):
            rng = _rng(seed, _SPLIT_IDS[split], index, _STREAM_NAME)
            day = 3 * index + _SPLIT_IDS[split]
            date = dt.date(2024 + day // 300, 8, 1) + dt.timedelta(days=day % 300)
            home, away = rng.choice(len(_TEAMS), size=2, replace=False)
            goals = rng.poisson(1.4, size=2)
            kickoff = _KICKOFFS[int(rng.integers(len(_KICKOFFS)))]
            games.append(
                DemoGame(split, index, date, kickoff, _TEAMS[home], _TEAMS[away], int(goals[0]), int(goals[1]))
            )
    return games


def demo_games(seed: int, n_train: int = 3, n_valid: int = 1, n_test: int = 1) -> dict[str, list[str]]:
    """Split -> game names (``<league>/<season>/<game>``) of the demo tree; generates nothing."""
    splits: dict[str, list[str]] = {split: [] for split in DEMO_SPLITS}
    for game in demo_game_specs(seed, n_train, n_valid, n_test):
        splits[game.split].append(game.name)
    return splits


def demo_files(seed: int, n_train: int = 3, n_valid: int = 1, n_test: int = 1) -> list[str]:
    """Every file the generator writes under the data root, as paths relative to it.

    The split lists, ``<splits_dir>/<split>.txt`` for each of :data:`DEMO_SPLITS`, come on top.
    """
    files = []
    for game in demo_game_specs(seed, n_train, n_valid, n_test):
        files.append(labels_path("", game.name).as_posix())
        for half in HALVES:
            files.append(video_path("", game.name, half).as_posix())
            files.append(baidu_path("", game.name, half).as_posix())
    return files


def split_list_path(splits_dir: str | Path, split: str) -> Path:
    """``<splits_dir>/<split>.txt``: one game per line."""
    return Path(splits_dir) / f"{split}.txt"


# --------------------------------------------------------------------------------------------------
# Events and labels


@dataclass(frozen=True)
class DemoEvent:
    """One annotated action. ``position_ms`` is milliseconds within ``half``."""

    half: int
    position_ms: int
    class_index: int
    team: str
    visibility: str

    @property
    def time_s(self) -> float:
        return self.position_ms / 1000.0


@dataclass(frozen=True)
class GamePlan:
    """What a game's files will hold: ``durations`` (s) per half and the events, by half and time."""

    game: DemoGame
    durations: dict[int, float]
    events: list[DemoEvent]

    def half_events(self, half: int) -> list[DemoEvent]:
        return [e for e in self.events if e.half == half]


def _min_half_duration_s(n_events: int) -> float:
    return 2 * EDGE_MARGIN_S + (n_events - 1) * MIN_EVENT_GAP_S


def min_half_duration_s() -> float:
    """The shortest ``half_duration_s`` (s) that holds the 17 classes in one game."""
    return _min_half_duration_s(int(np.ceil(len(SOCCERNET_V2_CLASSES) / 2)))


def plan_game(seed: int, game: DemoGame, half_duration_s: float) -> GamePlan:
    """Draw a game's half durations and events.

    Each half's video lasts ``half_duration_s`` plus 0.2-0.8 s, a whole number of 25-fps frames: real
    halves do not end on a whole second, so the Baidu features have ``floor(duration)`` rows and the
    2-fps frames cover a little more than that.

    Every class occurs at least once per game; the others are uniform extras, about 0.8 of what fits
    at ``EVENT_GAP_S`` spacing. Within a half, events are at least ``EVENT_GAP_S`` apart (less when
    the half is too short to hold its share, never below ``MIN_EVENT_GAP_S``), never within
    ``EDGE_MARGIN_S`` of either end, at integer milliseconds off the 0.5-s grid. Team: home or away
    (45 % each) or not applicable; visibility "not shown" with rate ``NOT_SHOWN_RATE``, at least once.
    """
    if half_duration_s < min_half_duration_s():
        raise InputError(
            f"half_duration_s (--half-duration) = {half_duration_s} s is too short to hold the 17 classes "
            f"(needs >= {min_half_duration_s():.1f} s)"
        )
    rng = game.rng(seed, _STREAM_LABELS)
    extra = rng.uniform(0.2, 0.8, size=len(HALVES))
    durations = {half: round((half_duration_s + e) * FPS) / FPS for half, e in zip(HALVES, extra)}

    n_classes = len(SOCCERNET_V2_CLASSES)
    spans = {half: durations[half] - 2 * EDGE_MARGIN_S for half in HALVES}
    capacity = sum(int(span // EVENT_GAP_S) + 1 for span in spans.values())
    n_total = max(n_classes, round(0.8 * capacity))
    classes = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n_total - n_classes)])
    classes = rng.permutation(classes)
    n_first = n_total // 2 + (int(rng.integers(0, 2)) if n_total % 2 else 0)
    counts = {1: n_first, 2: n_total - n_first}

    events = []
    start = 0
    for half in HALVES:
        n, span = counts[half], spans[half]
        gap = EVENT_GAP_S if n <= 1 else min(EVENT_GAP_S, span / (n - 1))
        slack = span - (n - 1) * gap
        offsets = np.sort(rng.uniform(0.0, slack, n)) + gap * np.arange(n) + EDGE_MARGIN_S
        lower, upper = int(np.ceil(EDGE_MARGIN_S * 1000)), int((durations[half] - EDGE_MARGIN_S) * 1000)
        for k, offset in enumerate(offsets):
            position = min(max(int(round(offset * 1000)), lower), upper)
            if position % 500 == 0:  # real positions are not on the 2-fps grid
                position += 1 if position < upper else -1
            team = ("home", "away", "not applicable")[int(rng.choice(3, p=[0.45, 0.45, 0.1]))]
            shown = "not shown" if rng.random() < NOT_SHOWN_RATE else "visible"
            events.append(DemoEvent(half, position, int(classes[start + k]), team, shown))
        start += n
    if all(e.visibility == "visible" for e in events):
        k = int(rng.integers(len(events)))
        e = events[k]
        events[k] = DemoEvent(e.half, e.position_ms, e.class_index, e.team, "not shown")
    return GamePlan(game, durations, events)


def labels_document(plan: GamePlan) -> dict:
    """A ``Labels-v2.json`` document: the official fields, ``annotations`` in time order."""
    game = plan.game
    annotations = []
    for e in plan.events:
        seconds = e.position_ms // 1000
        annotations.append(
            {
                "gameTime": f"{e.half} - {seconds // 60:02d}:{seconds % 60:02d}",
                "label": SOCCERNET_V2_CLASSES[e.class_index],
                "position": str(e.position_ms),
                "team": e.team,
                "visibility": e.visibility,
            }
        )
    return {
        "UrlLocal": game.name + "/",
        "UrlYoutube": "",
        "annotations": annotations,
        "gameAwayTeam": game.away,
        "gameDate": f"{game.date:%d/%m/%Y} - {game.kickoff.replace('-', ':')}",
        "gameHomeTeam": game.home,
        "gameScore": f"{game.home_goals} - {game.away_goals}",
    }


# --------------------------------------------------------------------------------------------------
# Baidu-shaped features


@dataclass(frozen=True)
class FeatureBasis:
    """Dataset-wide structure of the fake Baidu features (the "extractor").

    ``class_directions`` (17, D) and ``background_directions`` (BACKGROUND_RANK, D) are orthonormal
    rows; ``offset`` and ``scale`` (D,) map the unit-noise space to the stored values.
    """

    class_directions: np.ndarray
    background_directions: np.ndarray
    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_seed(cls, seed: int, dim: int = BAIDU_DIM) -> FeatureBasis:
        rng = _rng(seed, _STREAM_FEATURES)
        n_classes = len(SOCCERNET_V2_CLASSES)
        q, _ = np.linalg.qr(rng.standard_normal((dim, n_classes + BACKGROUND_RANK)))
        return cls(
            class_directions=np.ascontiguousarray(q[:, :n_classes].T),
            background_directions=np.ascontiguousarray(q[:, n_classes:].T),
            offset=rng.normal(0.0, 1.0, dim),
            scale=np.exp(rng.normal(0.0, 0.5, dim)),
        )


def event_weights(events: list[DemoEvent], n_seconds: int) -> np.ndarray:
    """(n_seconds, 17) class-code weights: row i (second [i, i+1)) gets exp(-(d / width)^2) per event.

    ``d`` is the distance (s) from the row's centre ``i + 0.5`` to the event; "not shown" events
    count ``NOT_SHOWN_WEIGHT``. Weights are in units of :data:`EVENT_AMPLITUDE`.
    """
    weights = np.zeros((n_seconds, len(SOCCERNET_V2_CLASSES)))
    centres = np.arange(n_seconds) + 0.5
    for e in events:
        strength = 1.0 if e.visibility == "visible" else NOT_SHOWN_WEIGHT
        weights[:, e.class_index] += strength * np.exp(-(((centres - e.time_s) / EVENT_WIDTH_S) ** 2))
    weights[weights < 1e-3] = 0.0
    return weights


def baidu_features(
    basis: FeatureBasis, events: list[DemoEvent], duration_s: float, rng: np.random.Generator
) -> np.ndarray:
    """float32 (floor(duration_s), D): class codes at the events + slow background + unit noise.

    ``events`` are those of this half.
    """
    n_seconds = int(np.floor(duration_s + 1e-9))
    dim = basis.offset.shape[0]
    z = rng.standard_normal((n_seconds, dim), dtype=np.float32).astype(np.float64)
    t = np.arange(n_seconds)[:, None]
    periods = rng.uniform(20.0, 200.0, (3, BACKGROUND_RANK))
    phases = rng.uniform(0.0, 2 * np.pi, (3, BACKGROUND_RANK))
    slow = sum(np.sin(2 * np.pi * t / periods[k] + phases[k]) for k in range(3)) / np.sqrt(1.5)
    z += BACKGROUND_AMPLITUDE * slow @ basis.background_directions
    z += EVENT_AMPLITUDE * event_weights(events, n_seconds) @ basis.class_directions
    return (basis.offset + basis.scale * z).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Video


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-mask of one of six shapes on coordinates u, v in [-1, 1] (v grows downwards)."""
    r = np.hypot(u, v)
    if shape == 0:  # square
        return np.maximum(abs(u), abs(v)) <= 0.85
    if shape == 1:  # disc
        return r <= 0.9
    if shape == 2:  # triangle, apex up
        return (abs(v) <= 0.85) & (abs(u) <= 0.9 * (v + 0.85) / 1.7)
    if shape == 3:  # plus
        return ((abs(u) <= 0.3) & (abs(v) <= 0.9)) | ((abs(v) <= 0.3) & (abs(u) <= 0.9))
    if shape == 4:  # ring
        return (r >= 0.5) & (r <= 0.9)
    return abs(u) + abs(v) <= 0.95  # diamond


@dataclass(frozen=True)
class Glyph:
    """A class's picture: ``rgb`` (s, s, 3) uint8 and ``mask`` (s, s) bool of the pixels it covers."""

    rgb: np.ndarray
    mask: np.ndarray


def glyph_colour(class_index: int) -> np.ndarray:
    """RGB (3,) uint8 of a class: 17 hues around the wheel, in [24, 231] so noise never saturates."""
    r, g, b = colorsys.hsv_to_rgb(class_index / len(SOCCERNET_V2_CLASSES), 0.85, 0.95)
    return np.array([24 + round(207 * c) for c in (r, g, b)], dtype=np.uint8)


def make_glyph(class_index: int, size: int) -> Glyph:
    """Shape ``class_index % 6`` in the class colour with a dark outline, ``size`` px square."""
    v, u = (np.mgrid[0:size, 0:size] + 0.5) / size * 2.0 - 1.0
    inner = _shape_mask(class_index % 6, u * 1.15, v * 1.15)
    outer = _shape_mask(class_index % 6, u, v) | inner
    rgb = np.full((size, size, 3), 24, dtype=np.uint8)
    rgb[inner] = glyph_colour(class_index)
    return Glyph(rgb=rgb, mask=outer)


def glyph_cell(class_index: int) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` px of the class's cell in a 398x224 frame; its glyph lies inside."""
    row, col = divmod(class_index, GRID_COLS)
    top, bottom = round(row * FRAME_HEIGHT / GRID_ROWS), round((row + 1) * FRAME_HEIGHT / GRID_ROWS)
    left, right = round(col * FRAME_WIDTH / GRID_COLS), round((col + 1) * FRAME_WIDTH / GRID_COLS)
    return top, left, bottom, right


def pitch_texture(seed: int, game: DemoGame) -> np.ndarray:
    """(224 + PAN_Y, 398 + PAN_X, 3) uint8 pitch of a game: mown stripes, soft shading, white lines."""
    rng = game.rng(seed, _STREAM_VIDEO)
    height, width = FRAME_HEIGHT + PAN_Y, FRAME_WIDTH + PAN_X
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.array([52.0, 118.0, 46.0]) + rng.uniform(-8, 8, 3)
    stripes = np.where((x // 36) % 2 == 0, 1.0, -1.0) * 9.0
    waves = zip(rng.uniform(-1 / 300, 1 / 300, 4), rng.uniform(-1 / 200, 1 / 200, 4), rng.uniform(0, 6.3, 4))
    shading = sum(rng.uniform(2, 5) * np.sin(2 * np.pi * (x * fx + y * fy) + p) for fx, fy, p in waves)
    canvas = base + ((stripes + shading)[..., None] * np.array([0.5, 1.0, 0.5]))
    cx, cy = width / 2, height / 2
    lines = (abs(x - cx) < 2) | (abs(np.hypot(x - cx, y - cy) - 70) < 2)
    lines |= (abs(y - 10) < 2) | (abs(y - (height - 10)) < 2)
    lines |= ((abs(x - 60) < 2) | (abs(x - (width - 60)) < 2)) & (abs(y - cy) < 80)
    canvas[lines] = 215.0
    return np.clip(np.rint(canvas), 24, 231).astype(np.uint8)


def noise_texture(seed: int, margin: int = 64) -> np.ndarray:
    """(224 + margin, 398 + margin, 3) uint8: rounded N(0, NOISE_STD) in [-3 std, 3 std], mod 256.

    Added to a frame with values in [24, 231] by uint8 addition, it gives the exact sum (the
    wrap-around undoes itself), so a noisy frame costs one vectorised add of a shifted view.
    """
    bound = int(np.ceil(3 * NOISE_STD))
    assert bound <= 24, "noise must not push [24, 231] out of [0, 255]"
    rng = _rng(seed, _STREAM_VIDEO)
    size = (FRAME_HEIGHT + margin, FRAME_WIDTH + margin, 3)
    noise = np.clip(np.rint(rng.normal(0.0, NOISE_STD, size)), -bound, bound)
    return noise.astype(np.int16).astype(np.uint8)


def _camera_path(rng: np.random.Generator, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer top-left offsets (y, x) of the camera window per frame: slow pans plus faster sway."""
    t = np.arange(n_frames) / FPS
    p1, p2, p3 = rng.uniform(25, 45), rng.uniform(6, 12), rng.uniform(8, 16)
    f1, f2, f3 = rng.uniform(0, 2 * np.pi, 3)
    sway_x = 0.75 * np.sin(2 * np.pi * t / p1 + f1) + 0.25 * np.sin(2 * np.pi * t / p2 + f2)
    x = np.rint(PAN_X / 2 * (1 + sway_x)).astype(int).clip(0, PAN_X)
    y = np.rint(PAN_Y / 2 * (1 + np.sin(2 * np.pi * t / p3 + f3))).astype(int).clip(0, PAN_Y)
    return y, x


@dataclass(frozen=True)
class _Stamp:
    first: int  # first frame index
    last: int  # last frame index, inclusive
    top: int
    left: int
    glyph: Glyph
    alpha: float


def _stamps(events: list[DemoEvent], n_frames: int, rng: np.random.Generator) -> list[_Stamp]:
    """Where and when each event's glyph is drawn (frames within GLYPH_HALF_WIDTH_S of the event)."""
    n_classes = len(SOCCERNET_V2_CLASSES)
    full = [make_glyph(c, GLYPH_SIZE) for c in range(n_classes)]
    small = [make_glyph(c, round(GLYPH_SIZE * NOT_SHOWN_SCALE)) for c in range(n_classes)]
    stamps = []
    for e in events:
        visible = e.visibility == "visible"
        glyph = full[e.class_index] if visible else small[e.class_index]
        size = glyph.mask.shape[0]
        top, left, bottom, right = glyph_cell(e.class_index)
        dy, dx = rng.integers(-GLYPH_JITTER, GLYPH_JITTER + 1, 2)
        y = int(np.clip((top + bottom - size) // 2 + dy, top, bottom - size))
        x = int(np.clip((left + right - size) // 2 + dx, left, right - size))
        first = max(int(np.ceil((e.time_s - GLYPH_HALF_WIDTH_S) * FPS - 1e-9)), 0)
        last = min(int(np.floor((e.time_s + GLYPH_HALF_WIDTH_S) * FPS + 1e-9)), n_frames - 1)
        stamps.append(_Stamp(first, last, y, x, glyph, 1.0 if visible else NOT_SHOWN_ALPHA))
    return stamps


def _draw(frame: np.ndarray, stamp: _Stamp) -> None:
    size = stamp.glyph.mask.shape[0]
    region = frame[stamp.top : stamp.top + size, stamp.left : stamp.left + size]
    mask = stamp.glyph.mask
    if stamp.alpha >= 1.0:
        region[mask] = stamp.glyph.rgb[mask]
    else:
        blend = (1 - stamp.alpha) * region[mask] + stamp.alpha * stamp.glyph.rgb[mask]
        region[mask] = np.rint(blend).astype(np.uint8)


def half_frames(
    seed: int,
    plan: GamePlan,
    half: int,
    draw_events: bool = True,
    pitch: np.ndarray | None = None,
    noise: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """The raw 25-fps RGB frames of a half, in batches of (<= 25, 224, 398, 3) uint8.

    Each batch is one second of video; the buffer is reused, so copy a batch to keep it. With
    ``draw_events=False`` the same half without its glyphs (same camera path and noise). ``pitch``
    and ``noise`` are :func:`pitch_texture` and :func:`noise_texture`, computed when not given.
    """
    pitch = pitch_texture(seed, plan.game) if pitch is None else pitch
    noise = noise_texture(seed) if noise is None else noise
    n_frames = round(plan.durations[half] * FPS)
    rng = plan.game.rng(seed, _STREAM_VIDEO, half)
    cam_y, cam_x = _camera_path(rng, n_frames)
    noise_y = rng.integers(0, noise.shape[0] - FRAME_HEIGHT + 1, n_frames)
    noise_x = rng.integers(0, noise.shape[1] - FRAME_WIDTH + 1, n_frames)
    stamps = _stamps(plan.half_events(half), n_frames, plan.game.rng(seed, _STREAM_GLYPHS, half))
    if not draw_events:
        stamps = []
    batch = np.empty((FPS, FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)
    for start in range(0, n_frames, FPS):
        stop = min(start + FPS, n_frames)
        active = [s for s in stamps if s.first < stop and s.last >= start]
        for i in range(start, stop):
            frame = batch[i - start]
            np.copyto(frame, pitch[cam_y[i] : cam_y[i] + FRAME_HEIGHT, cam_x[i] : cam_x[i] + FRAME_WIDTH])
            for stamp in active:
                if stamp.first <= i <= stamp.last:
                    _draw(frame, stamp)
            ny, nx = noise_y[i], noise_x[i]
            np.add(frame, noise[ny : ny + FRAME_HEIGHT, nx : nx + FRAME_WIDTH], out=frame)
        yield batch[: stop - start]


def find_ffmpeg(ffmpeg: str | None = None) -> str:
    """The ffmpeg binary to use: ``ffmpeg`` when given (a path or a name on PATH), else imageio-ffmpeg's."""
    if ffmpeg is None:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    found = shutil.which(ffmpeg)
    if found is None:
        raise InputError(f"--ffmpeg {ffmpeg}: no such executable")
    return found


def _encoder_args(ffmpeg: str, out: Path, crf: int, threads: int) -> list[str]:
    import ffmpeg as ffmpeg_python

    stream = ffmpeg_python.input(
        "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{FRAME_WIDTH}x{FRAME_HEIGHT}", framerate=FPS
    ).output(
        str(out),
        format="matroska",  # the temporary name ends in .partial
        vcodec="libx264",
        preset="ultrafast",
        crf=crf,
        pix_fmt="yuv420p",
        r=FPS,
        threads=threads,
        map_metadata=-1,
        fflags="+bitexact",
        **{"flags:v": "+bitexact"},
    )
    return stream.global_args("-loglevel", "error").overwrite_output().compile(cmd=ffmpeg)


def encode_video(
    path: str | Path, batches: Iterable[np.ndarray], ffmpeg: str, crf: int = DEFAULT_CRF, threads: int = 1
) -> None:
    """Encode RGB frame batches (n, 224, 398, 3) uint8 at 25 fps to an H.264 yuv420p ``path`` (atomically).

    Frames go to ffmpeg through a pipe; ffmpeg's log goes to a temporary file (no pipe to fill).
    Raises RuntimeError with the end of that log when ffmpeg fails.
    """
    with atomic_path(path) as tmp, tempfile.TemporaryFile() as log:
        process = subprocess.Popen(_encoder_args(ffmpeg, tmp, crf, threads), stdin=subprocess.PIPE, stderr=log)
        try:
            for batch in batches:
                process.stdin.write(np.ascontiguousarray(batch).data)
            process.stdin.close()
        except BrokenPipeError:  # ffmpeg died; its exit status and log say why
            pass
        finally:
            if not process.stdin.closed:
                try:
                    process.stdin.close()
                except BrokenPipeError:
                    pass
            returncode = process.wait()
        if returncode != 0:
            log.seek(0)
            message = log.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"{ffmpeg} failed on {path} (exit {returncode}): {' | '.join(message[-3:])}")


# --------------------------------------------------------------------------------------------------
# The whole tree


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def generate_demo(
    root: str | Path,
    splits_dir: str | Path,
    seed: int = 0,
    n_train: int = 3,
    n_valid: int = 1,
    n_test: int = 1,
    half_duration_s: float = 120.0,
    ffmpeg: str | None = None,
    crf: int = DEFAULT_CRF,
    threads: int = 1,
) -> dict[str, list[str]]:
    """Write the demo tree under ``root`` and its split lists under ``splits_dir``; return the splits.

    Files are those of :func:`demo_files` plus ``<splits_dir>/<split>.txt``; each is written
    atomically, the split lists last. ``threads`` is x264's thread count.
    """
    games = demo_game_specs(seed, n_train, n_valid, n_test)
    if not np.isfinite(half_duration_s) or half_duration_s <= 0:
        raise InputError(f"half_duration_s (--half-duration) = {half_duration_s} must be a positive number of seconds")
    if crf < 0 or crf > 51:
        raise InputError(f"crf (--crf) = {crf} must be in [0, 51]")
    if threads < 1:
        raise InputError(f"threads (--threads) = {threads} must be >= 1")
    if half_duration_s < min_half_duration_s():
        raise InputError(
            f"half_duration_s (--half-duration) = {half_duration_s} s is too short to hold the 17 classes "
            f"(needs >= {min_half_duration_s():.1f} s)"
        )
    ffmpeg = find_ffmpeg(ffmpeg)
    root, splits_dir = Path(root), Path(splits_dir)
    basis = FeatureBasis.from_seed(seed)
    noise = noise_texture(seed)

    for game in games:
        plan = plan_game(seed, game, half_duration_s)
        _write_text(labels_path(root, game.name), json.dumps(labels_document(plan), indent=4) + "\n")
        pitch = pitch_texture(seed, game)
        for half in HALVES:
            feature_rng = game.rng(seed, _STREAM_FEATURES, half)
            features = baidu_features(basis, plan.half_events(half), plan.durations[half], feature_rng)
            _write_npy(baidu_path(root, game.name, half), features)
            frames = half_frames(seed, plan, half, pitch=pitch, noise=noise)
            encode_video(video_path(root, game.name, half), frames, ffmpeg, crf, threads)

    splits = {split: [g.name for g in games if g.split == split] for split in DEMO_SPLITS}
    for split, names in splits.items():
        _write_text(split_list_path(splits_dir, split), "".join(f"{name}\n" for name in names))
    return splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="comedian demo-data",
        description="Generate a small synthetic SoccerNet-v2 tree (videos, Labels-v2.json, Baidu features) "
        "and its split lists, deterministically from a seed.",
    )
    parser.add_argument("--root", required=True, type=Path, help="data root: <league>/<season>/<game>/ go here")
    parser.add_argument("--splits-dir", required=True, type=Path, help="folder for train.txt, valid.txt, test.txt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-games", type=int, default=3)
    parser.add_argument("--valid-games", type=int, default=1)
    parser.add_argument("--test-games", type=int, default=1)
    parser.add_argument("--half-duration", type=float, default=120.0, help="seconds per half (default 120)")
    parser.add_argument("--ffmpeg", default=None, help="ffmpeg binary (default: imageio-ffmpeg's)")
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF, help="x264 constant rate factor (default 28)")
    parser.add_argument("--threads", type=int, default=1, help="x264 threads (default 1)")
    args = parser.parse_args(argv)
    from comedian.tracking import stage_run

    params = {k: v for k, v in vars(args).items() if k not in {"root", "splits_dir", "ffmpeg"}}
    with stage_run("demo-data", params=params) as run:
        start = time.perf_counter()
        splits = generate_demo(
            args.root, args.splits_dir, args.seed, args.train_games, args.valid_games, args.test_games,
            args.half_duration, args.ffmpeg, args.crf, args.threads,
        )  # fmt: skip
        n_games = sum(len(names) for names in splits.values())
        run.log_metrics({"games": n_games, "seconds": time.perf_counter() - start})
    print(f"comedian demo-data: {n_games} games under {args.root} in {time.perf_counter() - start:.1f} s")
    return 0
