"""The SoccerNet-v2 layout: class list, game folders, split lists and ``Labels-v2.json``.

A game is named by its path relative to the data root, ``<league>/<season>/<game>``, exactly as
SoccerNet's split lists name it. Files and HDF5 keys of this project use :func:`game_slug`, a
name without spaces or slashes, so that shell commands and Snakemake wildcards stay simple.

Times are seconds within a half (floats); halves are the integers 1 and 2.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from comedian.errors import InputError

if TYPE_CHECKING:  # pandas is imported where tables are built, so that light commands start fast
    import pandas as pd

#: The 17 action classes of SoccerNet-v2, in the official index order.
SOCCERNET_V2_CLASSES: tuple[str, ...] = (
    "Penalty",
    "Kick-off",
    "Goal",
    "Substitution",
    "Offside",
    "Shots on target",
    "Shots off target",
    "Clearance",
    "Ball out of play",
    "Throw-in",
    "Foul",
    "Indirect free-kick",
    "Direct free-kick",
    "Corner",
    "Yellow card",
    "Red card",
    "Yellow->red card",
)

HALVES: tuple[int, ...] = (1, 2)
VISIBILITIES: tuple[str, ...] = ("visible", "not shown")
LABEL_COLUMNS: tuple[str, ...] = ("game", "half", "time_s", "class_index", "label", "visibility", "team")


def video_path(root: str | Path, game: str, half: int) -> Path:
    """``<root>/<game>/<half>_224p.mkv``."""
    return Path(root) / game / f"{half}_224p.mkv"


def baidu_path(root: str | Path, game: str, half: int) -> Path:
    """``<root>/<game>/<half>_baidu_soccer_embeddings.npy``: float32 (T, 8576), row i = second i."""
    return Path(root) / game / f"{half}_baidu_soccer_embeddings.npy"


def labels_path(root: str | Path, game: str) -> Path:
    """``<root>/<game>/Labels-v2.json``."""
    return Path(root) / game / "Labels-v2.json"


def game_slug(game: str) -> str:
    """A file-system and wildcard friendly name of a game: runs of other characters become ``_``.

    >>> game_slug("england_epl/2014-2015/2015-05-17 - 18-00 Manchester United 1 - 1 Arsenal")
    'england_epl_2014-2015_2015-05-17_-_18-00_Manchester_United_1_-_1_Arsenal'
    """
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", game.strip("/")).strip("_")


def slug_table(games: list[str]) -> dict[str, str]:
    """Map slug -> game for a list of games; two games with one slug are an error."""
    table: dict[str, str] = {}
    for game in games:
        slug = game_slug(game)
        if slug in table and table[slug] != game:
            raise InputError(f"games {table[slug]!r} and {game!r} share the file name {slug!r}")
        table[slug] = game
    return table


def read_game_list(path: str | Path) -> list[str]:
    """A split list: one game (``<league>/<season>/<game>``) per line; blank lines and ``#`` ignored.

    A ``.json`` list (SoccerNet's own format: a JSON array of games) is read too.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise InputError(f"{path}: cannot read split list ({err.strerror})") from None
    if path.suffix == ".json":
        games = json.loads(text)
        if not isinstance(games, list) or not all(isinstance(g, str) for g in games):
            raise InputError(f"{path}: a split list in JSON must be an array of game paths")
    else:
        games = [line.strip() for line in text.splitlines()]
        games = [g for g in games if g and not g.startswith("#")]
    if len(set(games)) != len(games):
        raise InputError(f"{path}: a game is listed twice")
    return games


def read_game_lists(paths: list[str | Path]) -> list[str]:
    """The games of several split lists (e.g. train + valid), in order; a game in two lists is an error
    naming both files."""
    games: list[str] = []
    seen: dict[str, Path] = {}
    for path in paths:
        for game in read_game_list(path):
            if game in seen:
                raise InputError(f"{path}: game {game!r} is also in {seen[game]}")
            seen[game] = Path(path)
            games.append(game)
    return games


def parse_game_time(value: object, source: str) -> tuple[int, float]:
    """``"1 - 16:39"`` -> (half 1, 999.0 s). ``source`` names the file and entry for errors."""
    match = re.fullmatch(r"\s*([12])\s*-\s*(\d+):(\d{1,2})\s*", str(value))
    if match is None:
        raise InputError(f"{source}: gameTime {value!r} is not '<half> - <minutes>:<seconds>'")
    return int(match[1]), 60.0 * int(match[2]) + int(match[3])


def read_labels(
    root: str | Path,
    game: str,
    classes: tuple[str, ...] = SOCCERNET_V2_CLASSES,
    half_durations: dict[int, float] | None = None,
    tolerance_s: float = 0.0,
) -> pd.DataFrame:
    """Parse a game's ``Labels-v2.json`` into a table with columns :data:`LABEL_COLUMNS`.

    ``time_s`` is ``position`` (milliseconds within the half) / 1000; where ``position`` is
    missing, the time of ``gameTime`` is used, as the official scorer does. ``class_index`` indexes
    ``classes``; labels not in ``classes`` are skipped with one warning per file that names them and
    counts them. With ``half_durations`` (seconds per half), a label past the end of its half by at most
    ``tolerance_s`` is kept (real annotations can sit slightly past the end of a video) with one warning per
    file that names and counts them; one further past is an error. Raises :class:`InputError` naming the file and the entry for malformed input.
    """
    import pandas as pd

    path = labels_path(root, game)
    try:
        document = json.loads(path.read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read labels ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    annotations = document.get("annotations") if isinstance(document, dict) else None
    if not isinstance(annotations, list):
        raise InputError(f"{path}: field 'annotations' is missing or not a list")

    index = {name: i for i, name in enumerate(classes)}
    skipped: dict[str, int] = {}
    late: list[str] = []
    rows = []
    for k, item in enumerate(annotations):
        where = f"{path}: annotations[{k}]"
        if not isinstance(item, dict):
            raise InputError(f"{where} is not an object")
        for field in ("gameTime", "label"):
            if field not in item:
                raise InputError(f"{where}: field '{field}' is missing")
        half, clock_s = parse_game_time(item["gameTime"], f"{where}")
        label = item["label"]
        if label not in index:
            skipped[str(label)] = skipped.get(str(label), 0) + 1
            continue
        if "position" in item:
            try:
                time_s = int(item["position"]) / 1000.0
            except (TypeError, ValueError):
                raise InputError(f"{where}: field 'position' {item['position']!r} is not milliseconds") from None
        else:
            time_s = clock_s
        if time_s < 0:
            raise InputError(f"{where}: field 'position' is negative ({time_s} s)")
        if half_durations is not None and time_s > half_durations[half]:
            if time_s > half_durations[half] + tolerance_s:
                raise InputError(
                    f"{where}: field 'position' = {time_s:.3f} s is beyond the end of half {half} "
                    f"({half_durations[half]:.3f} s) by more than {tolerance_s:g} s"
                )
            late.append(f"{item['gameTime']} {label}")
        visibility = item.get("visibility", "visible")
        if visibility not in VISIBILITIES:
            raise InputError(f"{where}: field 'visibility' {visibility!r} is not one of {list(VISIBILITIES)}")
        rows.append((game, half, time_s, index[label], label, visibility, str(item.get("team", "not applicable"))))
    if skipped:
        counts = ", ".join(f"{name!r} x{n}" for name, n in sorted(skipped.items()))
        warnings.warn(f"{path}: skipped {sum(skipped.values())} labels outside the class list: {counts}", stacklevel=2)
    if late:
        warnings.warn(f"{path}: {len(late)} labels lie past the end of their half's video (within {tolerance_s:g} s), "
                      f"kept: {', '.join(late)}", stacklevel=2)
    table = pd.DataFrame(rows, columns=list(LABEL_COLUMNS))
    return table.astype({"half": "int64", "time_s": "float64", "class_index": "int64"})


def read_split_labels(
    root: str | Path,
    games: list[str],
    classes: tuple[str, ...] = SOCCERNET_V2_CLASSES,
    durations: dict[tuple[str, int], float] | None = None,
    tolerance_s: float = 0.0,
) -> pd.DataFrame:
    """The label tables of several games, concatenated, sorted by game, half and time.

    ``durations``: seconds covered by each (game, half), e.g. by its frames; a label past it by more than
    ``tolerance_s`` is an error (see :func:`read_labels`).
    """
    import pandas as pd

    def halves_of(game: str) -> dict[int, float] | None:
        return None if durations is None else {h: durations[(game, h)] for h in HALVES}

    tables = [read_labels(root, game, classes, halves_of(game), tolerance_s) for game in games]
    if not tables:
        return pd.DataFrame(columns=list(LABEL_COLUMNS))
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values(["game", "half", "time_s"], kind="stable", ignore_index=True)
