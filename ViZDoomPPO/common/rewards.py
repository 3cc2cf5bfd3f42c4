"""The paper's shaped reward (GameNGen appendix A.5), computed from game variables.

Pure functions of two game-variable snapshots (``reward_terms``), so every term can be unit-tested on a
constructed transition, plus the "new area" term, which needs the episode's visited cells
(``ExplorationTracker``). ``common.envs.DoomEnv`` reads the variables (``GAME_VARIABLES``) and adds the terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REWARD_WEIGHTS = {
    "player_hit": -100.0,  # per hit taken
    "death": -5000.0,
    "enemy_hit": 300.0,  # per hit dealt
    "kill": 1000.0,
    "pickup": 100.0,  # per item or weapon picked up
    "secret": 500.0,
    "new_area": 20.0,  # * (1 + 0.5 * L1 distance), see ExplorationTracker
    "health": 10.0,  # * delta
    "armor": 10.0,  # * delta
    "ammo": 10.0,  # * max(0, delta) + min(0, delta)
}

# The ViZDoom variables the reward and the recorded analysis columns read, in GameVars field order.
GAME_VARIABLES = (
    "HEALTH",
    "ARMOR",
    "AMMO2",  # bullets (pistol / chaingun share them)
    "AMMO3",  # shells
    "AMMO5",  # rockets
    "AMMO6",  # cells
    "KILLCOUNT",
    "HITCOUNT",
    "HITS_TAKEN",
    "ITEMCOUNT",
    "SECRETCOUNT",
    "WEAPON1",
    "WEAPON2",
    "WEAPON3",
    "WEAPON4",
    "WEAPON5",
    "WEAPON6",
    "WEAPON7",
    "DEAD",
    "POSITION_X",
    "POSITION_Y",
    "ANGLE",
    "SELECTED_WEAPON_AMMO",
)


@dataclass(frozen=True)
class GameVars:
    """A snapshot of the game variables the reward needs."""

    health: float = 100.0
    armor: float = 0.0
    ammo: float = 50.0  # sum of the distinct ammo pools (bullets, shells, rockets, cells)
    kills: float = 0.0
    hits_dealt: float = 0.0
    hits_taken: float = 0.0
    items: float = 0.0
    secrets: float = 0.0
    weapons: float = 2.0  # number of weapon slots owned (fist + pistol at start)
    dead: bool = False
    pos_x: float = 0.0
    pos_y: float = 0.0
    angle: float = 0.0
    selected_ammo: float = 0.0

    @classmethod
    def from_values(cls, values: list[float] | np.ndarray) -> GameVars:
        v = dict(zip(GAME_VARIABLES, (float(x) for x in values), strict=True))
        return cls(
            health=v["HEALTH"],
            armor=v["ARMOR"],
            ammo=v["AMMO2"] + v["AMMO3"] + v["AMMO5"] + v["AMMO6"],
            kills=v["KILLCOUNT"],
            hits_dealt=v["HITCOUNT"],
            hits_taken=v["HITS_TAKEN"],
            items=v["ITEMCOUNT"],
            secrets=v["SECRETCOUNT"],
            weapons=sum(v[f"WEAPON{i}"] > 0 for i in range(1, 8)),
            dead=v["DEAD"] > 0,
            pos_x=v["POSITION_X"],
            pos_y=v["POSITION_Y"],
            angle=v["ANGLE"],
            selected_ammo=v["SELECTED_WEAPON_AMMO"],
        )

    def analysis_columns(self) -> tuple[float, ...]:
        """Values of the dataset's optional columns (health, armor, ammo, kills, pos_x, pos_y, angle)."""
        return (self.health, self.armor, self.selected_ammo, self.kills, self.pos_x, self.pos_y, self.angle)


def reward_terms(prev: GameVars, cur: GameVars) -> dict[str, float]:
    """The paper's shaped reward for the transition ``prev -> cur``, term by term (before new_area).

    Health is clamped at 0 so that dying costs the death penalty plus the health that was left.
    """
    w = REWARD_WEIGHTS
    d_ammo = cur.ammo - prev.ammo
    return {
        "player_hit": w["player_hit"] * max(0.0, cur.hits_taken - prev.hits_taken),
        "death": w["death"] if (cur.dead and not prev.dead) else 0.0,
        "enemy_hit": w["enemy_hit"] * max(0.0, cur.hits_dealt - prev.hits_dealt),
        "kill": w["kill"] * max(0.0, cur.kills - prev.kills),
        "pickup": w["pickup"] * (max(0.0, cur.items - prev.items) + max(0.0, cur.weapons - prev.weapons)),
        "secret": w["secret"] * max(0.0, cur.secrets - prev.secrets),
        "health": w["health"] * (max(cur.health, 0.0) - max(prev.health, 0.0)),
        "armor": w["armor"] * (cur.armor - prev.armor),
        "ammo": w["ammo"] * max(0.0, d_ammo) + min(0.0, d_ammo),
    }


class ExplorationTracker:
    """The paper's "new area" term: entering a grid cell not yet visited in this episode gives
    ``20 * (1 + 0.5 * L1)``, where L1 is the cell distance (in cells) from the episode's start cell,
    so reaching far-away parts of the map pays more than circling the start."""

    def __init__(self, cell_size: float = 64.0) -> None:
        self.cell_size = cell_size
        self.visited: set[tuple[int, int]] = set()
        self.start = (0, 0)

    def cell(self, x: float, y: float) -> tuple[int, int]:
        return (math.floor(x / self.cell_size), math.floor(y / self.cell_size))

    def reset(self, x: float, y: float) -> None:
        self.start = self.cell(x, y)
        self.visited = {self.start}

    def update(self, x: float, y: float) -> float:
        cell = self.cell(x, y)
        if cell in self.visited:
            return 0.0
        self.visited.add(cell)
        distance = abs(cell[0] - self.start[0]) + abs(cell[1] - self.start[1])
        return REWARD_WEIGHTS["new_area"] * (1.0 + 0.5 * distance)
