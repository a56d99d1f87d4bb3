"""Published scores the benchmark report sets our runs against, carried in code (the report reads
nothing outside the package).

Atari100k: final scores (mean over the papers' seeds, 100k agent steps = 400k frames) of Drama XS,
DreamerV3, IRIS and TWM. Their random and human reference scores are
:data:`lightning_drama.scores.ATARI_SCORES`, not repeated here.

MinAtar has no human scores: a MinAtar return is normalised between a uniformly random policy's
return (measured here) and a published reference return, see :data:`MINATAR_REFERENCE`.
"""

from __future__ import annotations

# Atari100k final scores per game. Drama XS: Table 1 of Wang et al., "Drama: Mamba-Enabled
# Model-Based Reinforcement Learning Is Sample and Parameter Efficient" (ICLR 2025), as transcribed
# in github.com/wrrte/graduate_research atari_performance.csv, row DramaXS. With the random and
# human scores of ATARI_SCORES they give a human-normalised mean of 104.8 % and median of 27.0 %,
# the paper's stated 105 % and 27 % (tests/test_benchmark_report.py recomputes both). DreamerV3
# (Hafner et al. 2023), IRIS (Micheli et al. 2023) and TWM (Robine et al. 2023): the per-game
# Atari100k scores of their papers; they give human-normalised means / medians of 124.7 / 49.4 %
# (DreamerV3 states 125 / 49 %, also tested), 104.8 / 28.9 % and 95.7 / 50.6 %.
ATARI100K_PUBLISHED: dict[str, dict[str, float]] = {
    "Drama XS": {
        "Alien": 820.0,
        "Amidar": 131.0,
        "Assault": 539.0,
        "Asterix": 1632.0,
        "BankHeist": 137.0,
        "BattleZone": 10860.0,
        "Boxing": 78.0,
        "Breakout": 7.0,
        "ChopperCommand": 1642.0,
        "CrazyClimber": 83931.0,
        "DemonAttack": 201.0,
        "Freeway": 15.0,
        "Frostbite": 785.0,
        "Gopher": 2757.0,
        "Hero": 7946.0,
        "Jamesbond": 372.0,
        "Kangaroo": 1384.0,
        "Krull": 9693.0,
        "KungFuMaster": 23920.0,
        "MsPacman": 2270.0,
        "Pong": 15.0,
        "PrivateEye": 90.0,
        "Qbert": 796.0,
        "RoadRunner": 14020.0,
        "Seaquest": 497.0,
        "UpNDown": 7387.0,
    },
    "DreamerV3": {
        "Alien": 1118.0,
        "Amidar": 97.0,
        "Assault": 683.0,
        "Asterix": 1062.0,
        "BankHeist": 398.0,
        "BattleZone": 20300.0,
        "Boxing": 82.0,
        "Breakout": 10.0,
        "ChopperCommand": 2222.0,
        "CrazyClimber": 86225.0,
        "DemonAttack": 577.0,
        "Freeway": 0.0,
        "Frostbite": 3377.0,
        "Gopher": 2160.0,
        "Hero": 13354.0,
        "Jamesbond": 540.0,
        "Kangaroo": 2643.0,
        "Krull": 8171.0,
        "KungFuMaster": 25900.0,
        "MsPacman": 1521.0,
        "Pong": -4.0,
        "PrivateEye": 3238.0,
        "Qbert": 2921.0,
        "RoadRunner": 19230.0,
        "Seaquest": 962.0,
        "UpNDown": 46910.0,
    },
    "IRIS": {
        "Alien": 420.0,
        "Amidar": 143.0,
        "Assault": 1524.0,
        "Asterix": 854.0,
        "BankHeist": 53.0,
        "BattleZone": 13074.0,
        "Boxing": 70.0,
        "Breakout": 84.0,
        "ChopperCommand": 1565.0,
        "CrazyClimber": 59324.0,
        "DemonAttack": 2034.0,
        "Freeway": 31.0,
        "Frostbite": 259.0,
        "Gopher": 2236.0,
        "Hero": 7037.0,
        "Jamesbond": 463.0,
        "Kangaroo": 838.0,
        "Krull": 6616.0,
        "KungFuMaster": 21760.0,
        "MsPacman": 999.0,
        "Pong": 15.0,
        "PrivateEye": 100.0,
        "Qbert": 746.0,
        "RoadRunner": 9615.0,
        "Seaquest": 661.0,
        "UpNDown": 3546.0,
    },
    "TWM": {
        "Alien": 675.0,
        "Amidar": 122.0,
        "Assault": 683.0,
        "Asterix": 1117.0,
        "BankHeist": 467.0,
        "BattleZone": 5068.0,
        "Boxing": 78.0,
        "Breakout": 20.0,
        "ChopperCommand": 1697.0,
        "CrazyClimber": 71820.0,
        "DemonAttack": 350.0,
        "Freeway": 24.0,
        "Frostbite": 1476.0,
        "Gopher": 1675.0,
        "Hero": 7254.0,
        "Jamesbond": 362.0,
        "Kangaroo": 1240.0,
        "Krull": 6349.0,
        "KungFuMaster": 24555.0,
        "MsPacman": 1588.0,
        "Pong": 19.0,
        "PrivateEye": 87.0,
        "Qbert": 3331.0,
        "RoadRunner": 9109.0,
        "Seaquest": 774.0,
        "UpNDown": 15982.0,
    },
}

# MinAtar game (the name in "MinAtar/<Game>-v1") -> mean return of a uniformly random policy,
# MEASURED for this table with minatar 1.0.15: `Environment(game)` with its defaults
# (sticky_action_prob=0.1, difficulty_ramping=True), env.seed(0); actions drawn uniformly by
# numpy.random.default_rng(0); 1,000 consecutive episodes per game (reset between them), no
# episode reached the 100,000-step cap. Standard errors of the means: Asterix 0.028, Breakout
# 0.021, Freeway 0.019, Seaquest 0.011, SpaceInvaders 0.100 (minimal set).
# "-v1" ids act in the game's minimal action set (`minimal_action_set()`), "-v0" ids in all 6.
MINATAR_RANDOM: dict[str, float] = {  # -v1: minimal action set
    "Asterix": 0.503,
    "Breakout": 0.416,
    "Freeway": 0.358,
    "Seaquest": 0.086,
    "SpaceInvaders": 4.095,
}
MINATAR_RANDOM_ALL_ACTIONS: dict[str, float] = {  # -v0: all 6 actions, measured the same way
    "Asterix": 0.469,
    "Breakout": 0.536,
    "Freeway": 0.134,
    "Seaquest": 0.086,  # Seaquest's minimal action set is all 6 actions
    "SpaceInvaders": 2.898,
}

# MinAtar game -> reference return: a MinAtar score is (return - random) / (reference - random),
# so 1.0 is the reference agent. We found no published table of final MinAtar returns for all five
# games (the MinAtar paper, Young & Tian 2019, arXiv:1903.03176, and its README show curves
# only). The table used is the README of gymnax (https://github.com/RobertTLange/gymnax, README.md,
# table "Implemented Accelerated Environments", column "Ckpt (Return)"): the returns of its PPO
# checkpoints, rounded to integers there, trained by gymnax-blines
# (https://github.com/RobertTLange/gymnax-blines, agents/<Game>-MinAtar/ppo.yaml: PPO with a
# 2x256 MLP, 10M environment steps, 64 parallel envs) on gymnax's JAX re-implementation of
# MinAtar. That table has no Seaquest row, so Seaquest has no reference: its returns are reported
# raw and left out of the normalised aggregates.
MINATAR_REFERENCE: dict[str, float] = {
    "Asterix": 15.0,
    "Breakout": 28.0,
    "Freeway": 58.0,
    "SpaceInvaders": 131.0,
}
MINATAR_REFERENCE_NAME = "gymnax PPO checkpoint (10M steps)"
MINATAR_REFERENCE_SOURCE = (
    "https://github.com/RobertTLange/gymnax README.md, column 'Ckpt (Return)' (PPO, "
    "gymnax-blines agents/<Game>-MinAtar/ppo.yaml, 10M env steps)"
)
