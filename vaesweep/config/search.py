"""Settings of the constrained Optuna search (``search: optuna``); vaesweep/study/searcher.py runs it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str = "lam"
    mode: Literal["min", "max"] = "min"


class Sampler(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["gp", "tpe", "random"] = "gp"
    n_startup_trials: int = Field(1, ge=0, description="random trials before the model guides the search")
    seed: int = 0
