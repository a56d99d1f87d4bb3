"""Atari100k reference scores, human-normalised scores and their aggregates (mean, median, IQM).

The table is carried in code so that nothing outside the package is read at run time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# game -> (random score, human score), the standard Atari100k protocol's reference points.
ATARI_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (228.0, 7128.0),
    "Amidar": (6.0, 1720.0),
    "Assault": (222.0, 742.0),
    "Asterix": (210.0, 8503.0),
    "BankHeist": (14.0, 753.0),
    "BattleZone": (2360.0, 37188.0),
    "Boxing": (0.0, 12.0),
    "Breakout": (2.0, 30.0),
    "ChopperCommand": (811.0, 7388.0),
    "CrazyClimber": (10780.0, 35829.0),
    "DemonAttack": (152.0, 1971.0),
    "Freeway": (0.0, 30.0),
    "Frostbite": (65.0, 4335.0),
    "Gopher": (258.0, 2412.0),
    "Hero": (1027.0, 30826.0),
    "Jamesbond": (29.0, 303.0),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2666.0),
    "KungFuMaster": (258.0, 22736.0),
    "MsPacman": (307.0, 6952.0),
    "Pong": (-21.0, 15.0),
    "PrivateEye": (25.0, 69571.0),
    "Qbert": (164.0, 13455.0),
    "RoadRunner": (12.0, 7845.0),
    "Seaquest": (68.0, 42055.0),
    "UpNDown": (533.0, 11693.0),
}

_BY_LOWER = {game.lower(): game for game in ATARI_SCORES}

# "ALE/Pong-v5", "PongNoFrameskip-v4", "Pong-ramDeterministic-v4", "Pong"
_ATARI_ID = re.compile(
    r"^(?:ALE/)?(?P<game>[A-Za-z]+?)(?:-ram)?(?:NoFrameskip|Deterministic)?(?:-v\d+)?$"
)


def game_from_env_id(env_id: str) -> str | None:
    """The Atari100k game of an env id, or ``None`` when it is not one of :data:`ATARI_SCORES`.

    ``"ALE/Breakout-v5"``, ``"BreakoutNoFrameskip-v4"`` and ``"Breakout"`` all give ``"Breakout"``;
    ``"CartPole-v1"`` and ``"my.module:Catch"`` give ``None``, and so does an Atari game without
    reference scores (``"ALE/Tennis-v5"``), so a non-None game can always be normalised.
    """
    match = _ATARI_ID.match(env_id)
    return _BY_LOWER.get(match["game"].lower()) if match else None


def human_normalized(game: str, score: float) -> float:
    """``(score - random) / (human - random)``: 0 is the random policy, 1 the human reference."""
    if game not in ATARI_SCORES:
        raise ValueError(
            f"no reference scores for game {game!r} (use game_from_env_id to turn an env id such "
            f"as 'ALE/Pong-v5' into a game name); known games: {', '.join(ATARI_SCORES)}"
        )
    random, human = ATARI_SCORES[game]
    return (score - random) / (human - random)


def aggregate(normalized: Sequence[float]) -> dict[str, float]:
    """``mean``, ``median`` and ``iqm`` of per-game (human-normalised) scores.

    The interquartile mean drops ``floor(n / 4)`` of the sorted scores from each end and averages
    the rest (the same as ``scipy.stats.trim_mean(x, 0.25)``); with fewer than 4 scores nothing
    is dropped and it equals the mean.
    """
    scores = np.sort(np.asarray(normalized, dtype=np.float64))
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"aggregate needs a non-empty sequence of scores, got {normalized!r}")
    cut = scores.size // 4
    return {
        "mean": float(scores.mean()),
        "median": float(np.median(scores)),
        "iqm": float(scores[cut : scores.size - cut].mean()),
    }
