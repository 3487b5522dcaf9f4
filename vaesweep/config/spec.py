"""The study spec: one typed, validated description of a hyperparameter study, loaded from YAML.

    name: capacity
    base: {arch: dense, epochs: 100}          # any TrialConfig field, fixed for every trial
    space:                                    # any TrialConfig field, varied
      latent_dim: {grid: [2, 4, 8, 16, 32, 64]}
      lam: {loguniform: [0.05, 2.0]}
    seeds: 3                                  # repeats (seeds 0..2), or a list [0, 7, 9]
    search: {type: grid}                      # grid | random (num_samples draws per grid point)
    scheduler: {type: asha, metric: elbo, mode: max, grace_period: 10}   # optional
    stop: {when: settled, min_steps: 2000}    # optional: end each trial once its collapse has settled
    resources: {cpu: 1, gpu: 0.25}
    max_concurrent: 8
    retries: 2
    checkpoint_every: 1                       # a trial's checkpoint every N epochs (and at its last)
    storage: runs                             # results in <storage>/<name>/
    callbacks: [tensorboard, mlflow]          # optional tracking (vaesweep.study.tracking)

``experiment: <kind>`` picks what each trial runs (vaesweep.experiments: train by default, one VAE);
the kind's settings go under its name: ``experiment: noise`` with ``noise: {...}`` runs the Sec. 5
noise experiment in every trial instead (no scheduler, no epochs: see studies/noise.yaml).

``pack: auto | K | off`` (vaesweep.engine.packing): K compatible grid configurations per Ray trial, trained
together in batched kernels, each still its own trial row; auto packs 16 when trials get a GPU.

Everything is checked before anything runs: every grid value and range bound is validated as
a TrialConfig field, so a negative lambda or an unknown dataset is caught in the spec.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    Strict,
    StrictInt,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from vaesweep import experiments
from vaesweep.config.errors import SpecError
from vaesweep.config.packing import pack_problem
from vaesweep.config.search import Objective, Sampler
from vaesweep.config.trial import TrialConfig, one_line, trial_fields
from vaesweep.experiments.kind import Kind


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A number as YAML writes one: ``true`` is not 1, ``1e21`` is not a whole number, ``.inf`` is not a bound.
Number = Annotated[float, Strict(), AllowInfNan(False)]
MAX_INT = 2**31 - 1  # the largest size, count or step a trial field takes (a seed may be larger)
MAX_YAML_VALUES = 100_000  # a spec whose YAML expands (through aliases) to more values is refused


class _Domain(_Strict):
    """A field's domain in ``space``: listed values (``values``) or a range (``bounds``); vaesweep/study/space.py
    turns each into Ray Tune's."""

    @property
    def values(self) -> list[Any] | None:
        return None

    @property
    def bounds(self) -> tuple[Any, Any] | None:
        return None


class Grid(_Domain):
    grid: list[Any] = Field(min_length=1)

    @property
    def values(self) -> list[Any]:
        return self.grid


class Choice(_Domain):
    choice: list[Any] = Field(min_length=1)

    @property
    def values(self) -> list[Any]:
        return self.choice


class Uniform(_Domain):
    uniform: tuple[Number, Number]

    @property
    def bounds(self) -> tuple[float, float]:
        return self.uniform


class LogUniform(_Domain):
    loguniform: tuple[Number, Number]

    @field_validator("loguniform")
    @classmethod
    def _positive(cls, v):
        if v[0] <= 0:
            raise ValueError("loguniform bounds must be > 0, e.g. [0.01, 10]")
        return v

    @property
    def bounds(self) -> tuple[float, float]:
        return self.loguniform


class RandInt(_Domain):
    randint: tuple[StrictInt, StrictInt]  # both bounds included

    @property
    def bounds(self) -> tuple[int, int]:
        return self.randint


Domain = Grid | Choice | Uniform | LogUniform | RandInt


class Search(_Strict):
    """grid / random: Ray's variant generator. optuna: a constrained Optuna search per fixed setting
    (every combination of the grid fields and seeds), over the space's range fields, all settings at once."""

    type: Literal["grid", "random", "optuna"] = "grid"
    num_samples: StrictInt = Field(1, ge=1, description="random draws per grid point; optuna: trials per setting")
    objective: Objective | list[Objective] = Field(Objective(), description="optuna: default minimise lam")
    constrained: bool = Field(True, description="optuna: subject to the Sec. 4 laws (law_excess, mu_excess <= 0)")
    sampler: Sampler = Sampler()
    start: list[dict[str, Any]] = Field(default_factory=list, description="optuna: points to evaluate first")
    max_concurrent_per_setting: StrictInt | None = Field(
        1,
        ge=1,
        description="optuna: trials of one setting running at once (1: each suggestion sees every trial "
        "before it; null: as many as the cluster holds); different settings always run side by side",
    )

    def objectives(self) -> list[Objective]:
        return self.objective if isinstance(self.objective, list) else [self.objective]


class Scheduler(_Strict):
    type: Literal["asha"] = "asha"
    metric: str = "elbo"
    mode: Literal["min", "max"] = "max"
    grace_period: StrictInt = Field(5, ge=1)
    reduction_factor: Number = Field(3.0, gt=1)


class Stop(_Strict):
    """When a trial ends: its whole budget, or once its collapse has settled (vaesweep/engine/settle.py).
    Every trial gets it as ``stop_when`` and ``stop_min_steps``."""

    when: Literal["budget", "settled"] = Field(
        "budget",
        description="budget: every epoch; settled: the first evaluation whose collapse has settled, its Sec. 4 "
        "verdict the same over the settle window",
    )
    min_steps: StrictInt = Field(
        0, ge=0, le=MAX_INT, description="minibatches a trial trains at least before settling may end it"
    )

    def trial_fields(self) -> dict[str, Any]:
        return {"stop_when": self.when, "stop_min_steps": self.min_steps}


class Resources(_Strict):
    cpu: Number = Field(1.0, gt=0, le=MAX_INT)
    gpu: Number | Literal["auto"] = Field(
        0.0, description="per trial: 0.25 lets 4 trials share a GPU; auto: 0.25 where the cluster has GPUs, else 0"
    )

    @field_validator("gpu")
    @classmethod
    def _fraction_or_whole(cls, v):
        if v != "auto" and (v < 0 or (v > 1 and v != int(v))):
            raise ValueError("gpu per trial is a fraction up to 1 (e.g. 0.25), a whole number, or auto")
        return v

    def resolved(self, cluster_gpus: float) -> Resources:
        """Concrete resources for a cluster with ``cluster_gpus`` GPUs (resolves gpu: auto)."""
        if self.gpu != "auto":
            return self
        return Resources(cpu=self.cpu, gpu=0.25 if cluster_gpus > 0 else 0.0)


class StudySpec(_Strict):
    name: str = Field(description="the study's folder under storage: one folder name")
    dataset: str | None = Field(None, description="shorthand for base.dataset")
    data_root: str | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Domain] = Field(default_factory=dict)
    seeds: StrictInt | list[StrictInt] = Field(1)
    search: Search = Search()
    scheduler: Scheduler | None = None
    stop: Stop = Stop()
    metric: str = Field("elbo", description="what 'best trial' means in progress and status")
    mode: Literal["min", "max"] = "max"
    resources: Resources = Resources()
    max_concurrent: StrictInt | None = Field(None, ge=1, le=MAX_INT)
    retries: StrictInt = Field(2, ge=0, le=1000, description="Ray FailureConfig.max_failures per trial")
    max_trials: StrictInt = Field(
        100_000,
        ge=1,
        description="the most trials a study may have (grid points x seeds x num_samples); a larger one is "
        "refused before anything starts, with its size: raise this to run it",
    )
    checkpoint_every: StrictInt = Field(
        1,
        ge=1,
        le=MAX_INT,
        description="a checkpoint every N epochs and at the last; a retried trial resumes from the last one",
    )
    storage: str = "runs"
    experiment: str = Field(
        "train", description="what each trial runs: a kind of vaesweep.experiments.KINDS (train: one VAE per trial)"
    )
    kind_settings: SerializeAsAny[BaseModel] | None = Field(
        None, description="the kind's settings, written under its name (noise: {...}); see _settings_under_kind"
    )
    pack: Literal["auto", "off"] | int = Field(
        "auto",
        description="configurations trained together per Ray "
        "trial (vaesweep.engine.packing): auto (16 with a GPU, else off), K, or off",
    )
    callbacks: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="tracking through Ray Tune's logger callbacks (vaesweep.study.tracking)"
    )

    @field_validator("name")
    @classmethod
    def _one_folder(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v) or v in (".", ".."):
            raise ValueError(
                "a study name is one folder name: letters, digits, '_', '-', '.' but not '.' or '..' (e.g. capacity_v2)"
            )
        if len(v) > 255:
            raise ValueError(f"a study name is one folder name of at most 255 characters; this one has {len(v)}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("seeds is a count >= 1 or a non-empty list of seeds")
        if isinstance(v, list) and not v:
            raise ValueError("seeds is a count >= 1 or a non-empty list of seeds")
        if isinstance(v, list) and len(set(v)) < len(v):
            twice = sorted({s for s in v if v.count(s) > 1})
            raise ValueError(f"seed {twice[0]} is listed twice; give each seed once (e.g. [0, 1, 2])")
        if isinstance(v, int) and v > MAX_INT:
            raise ValueError(f"seeds: {v} repeats is more than any study runs; give a count such as 3")
        return v

    @model_validator(mode="before")
    @classmethod
    def _settings_under_kind(cls, raw: Any) -> Any:
        """Check the kind, and read its settings from the key named after it into ``kind_settings``
        (validated by its settings model; its defaults when absent). Another kind's settings are a mistake."""
        if not isinstance(raw, dict) or not isinstance(raw.get("experiment", "train"), str):
            return raw  # pydantic names the problem
        raw = dict(raw)
        if "kind_settings" in raw:
            raise ValueError("kind_settings: unknown key; write a kind's settings under its name, e.g. noise: {...}")
        try:
            chosen = experiments.kind(raw.get("experiment", "train"))
        except SpecError as err:
            raise ValueError(str(err)) from None
        for other in experiments.KINDS.values():
            if other.settings is None or other is chosen:
                continue
            if raw.pop(other.name, None) is not None:  # a saved spec writes absent settings as null
                raise ValueError(
                    f"{other.name}: settings of experiment: {other.name}; add 'experiment: {other.name}' "
                    f"or remove '{other.name}'"
                )
        if chosen.settings is not None:
            given = raw.pop(chosen.name, None)
            raw["kind_settings"] = _kind_settings(chosen, {} if given is None else given)
        return raw

    @model_serializer(mode="wrap")
    def _settings_under_name(self, handler) -> dict[str, Any]:
        """Dumped as written: the kind's settings under its name."""
        data = handler(self)
        settings = data.pop("kind_settings", None)
        if settings is not None:
            data[self.experiment] = settings
        return data

    @model_validator(mode="after")
    def _size_limit(self) -> StudySpec:
        n = self.n_grid_points()
        if n > self.max_trials:
            grid = " x ".join(str(len(d.grid)) for d in self.space.values() if isinstance(d, Grid)) or "1"
            raise ValueError(
                f"max_trials: the study has {n:,} trials (grid {grid} x {len(self.seed_list())} seeds x "
                f"num_samples {self.search.num_samples}), over the limit of {self.max_trials:,}; shrink the grid, "
                f"or raise the limit with max_trials: {n}"
            )
        return self

    @model_validator(mode="after")
    def _stop_once(self) -> StudySpec:
        if "stop" not in self.model_fields_set:
            return self
        for key, value in self.stop.trial_fields().items():
            if key in self.space or self.base.get(key, value) != value:
                where = "space" if key in self.space else "base"
                raise ValueError(f"{where}.{key}: set by stop: {{...}} as well; keep one of the two")
        return self

    @model_validator(mode="after")
    def _trials_valid(self) -> StudySpec:
        base = self.trial_base()
        for key in base:
            if key not in trial_fields():
                raise ValueError(f"base.{key}: unknown trial field; see TrialConfig for the fields")
        _check_trial(base, "base")
        for key, dom in self.space.items():
            if key not in trial_fields():
                raise ValueError(f"space.{key}: unknown trial field; see TrialConfig for the fields")
            if key == "seed":
                raise ValueError("space.seed: use the top-level 'seeds' for repeats")
            for value in _domain_points(dom, f"space.{key}"):
                _check_trial({**base, key: value}, f"space.{key}")
        return self

    @model_validator(mode="after")
    def _search_valid(self) -> StudySpec:
        ranged = [k for k, d in self.space.items() if not isinstance(d, Grid)]
        if self.search.type == "grid" and ranged:
            raise ValueError(f"space.{ranged[0]}: a range or choice needs search: {{type: random}} or {{type: optuna}}")
        if self.search.type == "optuna":
            if not ranged:
                raise ValueError(
                    "search.type: optuna searches the space's ranges; give one, e.g. "
                    "space: {lam: {loguniform: [0.05, 5]}}"
                )
            if self.scheduler is not None:
                raise ValueError("scheduler: not with search: optuna (each trial must finish to test the laws)")
            for i, p in enumerate(self.search.start):
                if set(p) - set(ranged):
                    raise ValueError(f"search.start: {sorted(set(p) - set(ranged))} are not range fields of space")
                for key, value in p.items():
                    _check_start(self.space[key], value, f"search.start.{i}.{key}")
                    _check_trial({**self.trial_base(), key: value}, f"search.start.{i}")
        return self

    @model_validator(mode="after")
    def _experiment_valid(self) -> StudySpec:
        self.kind.check(self)
        return self

    @field_validator("pack", mode="before")
    @classmethod
    def _pack_word(cls, v):
        if v is False:  # YAML 1.1 reads a bare off as false
            return "off"
        if v in ("auto", "off") or (isinstance(v, int) and not isinstance(v, bool)):
            return v
        raise ValueError("give auto, off, or a number of configurations per trial (e.g. 16)")

    @model_validator(mode="after")
    def _pack_valid(self) -> StudySpec:
        if isinstance(self.pack, int) and self.pack < 1:
            raise ValueError("pack: give a number of configurations >= 1, auto, or off")
        if isinstance(self.pack, int) and self.pack > 1:
            if (problem := pack_problem(self)) is not None:
                raise ValueError(problem)
        return self

    @property
    def kind(self) -> Kind:
        """The experiment kind each trial runs (vaesweep.experiments)."""
        return experiments.kind(self.experiment)

    def trial_values(self, field: str) -> list[Any]:
        """The values trials take for a trial field: the space's values (or range bounds), else base's or default."""
        if field in self.space:
            return _domain_points(self.space[field], f"space.{field}")
        return [self.trial_base().get(field, TrialConfig.model_fields[field].default)]

    def trial_base(self) -> dict[str, Any]:
        base = dict(self.base)
        if self.dataset is not None:
            base["dataset"] = self.dataset
        if self.data_root is not None:
            base["data_root"] = self.data_root
        if self.stop != Stop():  # the default leaves old studies' trial configs as they were
            base.update(self.stop.trial_fields())
        return base

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def settings(self) -> list[dict[str, Any]]:
        """The fixed settings: every combination of the grid fields and the seeds."""
        combos = [{}]
        for key, dom in self.space.items():
            if isinstance(dom, Grid):
                combos = [{**c, key: v} for c in combos for v in dom.grid]
        return [{**c, "seed": s} for c in combos for s in self.seed_list()]

    def n_grid_points(self) -> int:
        """Trials the study runs: every setting, num_samples times (optuna: trials per setting). Counted, not
        listed, so a huge grid is measured (and refused by max_trials) at once."""
        return (
            math.prod(len(d.grid) for d in self.space.values() if isinstance(d, Grid))
            * (len(self.seed_list()) if isinstance(self.seeds, list) else self.seeds)
            * self.search.num_samples
        )


def _domain_points(dom: Domain, where: str) -> list[Any]:
    """The values of a domain to validate: every listed value, or both range bounds."""
    if dom.values is not None:
        return list(dom.values)
    low, high = dom.bounds
    if not low < high:
        raise ValueError(f"{where}: range [{low}, {high}] is empty; give [low, high] with low < high")
    return [low, high]


def _kind_settings(kind: Kind, given: Any) -> BaseModel:
    """``given`` validated by the kind's settings model; a ValueError naming the field under the kind's name."""
    try:
        return kind.settings.model_validate(given)
    except ValidationError as err:
        where = f"{kind.name}." if err.errors()[0]["loc"] else f"{kind.name}: "  # a field, or the whole model
        raise ValueError(one_line(err, prefix=where)) from None


def _check_start(dom: Domain, value: Any, where: str) -> None:
    """A start point's value lies in its field's domain (a listed choice, or within the range's bounds)."""
    if isinstance(dom, Choice):
        if value not in dom.choice:
            raise ValueError(f"{where}: {value!r} is not one of the choices {dom.choice}; give one of them")
        return
    low, high = dom.bounds
    whole = isinstance(dom, RandInt)
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (whole and value != int(value)):
        raise ValueError(f"{where}: {value!r} is not a {'whole ' * whole}number; give one in [{low}, {high}]")
    if not low <= value <= high:
        raise ValueError(f"{where}: {value} is outside its range [{low}, {high}]; give one in the range")


def _plain(values: dict[str, Any], where: str) -> None:
    """Each trial field's value is of the kind YAML writes for it: no ``true`` for a number, no ``1e21`` for a
    whole number, no ``.inf`` or ``.nan``, no number as text, no size beyond MAX_INT (pydantic would convert)."""
    for key, value in values.items():
        field = TrialConfig.model_fields.get(key)
        if field is None:
            continue
        kinds = _kinds(field.annotation)
        items = value if isinstance(value, list | tuple) and "sequence" in kinds else [value]
        for v in items:
            problem = _plain_problem(key, v, kinds)
            if problem is not None:
                raise ValueError(f"{where}: {key}: {problem}")


def _kinds(annotation) -> set[str]:
    """What a TrialConfig field takes: 'int', 'float', 'bool', 'str' (a Literal counts as str), 'sequence'."""
    out = set()
    for a in get_args(annotation) or (annotation,):
        origin = get_origin(a)
        if origin is Literal:
            out.add("str")
        elif origin in (tuple, list):
            out |= {"sequence"} | _kinds(get_args(a)[0])
        elif a in (int, float, bool, str):
            out.add(a.__name__)
    return out


def _plain_problem(key: str, v: Any, kinds: set[str]) -> str | None:
    numeric = kinds & {"int", "float"}
    if isinstance(v, bool):
        return None if "bool" in kinds else f"{v!r} is not a number; give a number" if numeric else None
    if isinstance(v, float):
        if not math.isfinite(v):
            return f"{v} is not a finite number; give a finite one"
        if "float" not in kinds and "int" in kinds and v != int(v):
            return f"{v:g} is not a whole number; give one such as 128"
    if isinstance(v, int | float) and "int" in kinds and "float" not in kinds and key != "seed" and abs(v) > MAX_INT:
        return f"{v:g} is larger than any size or count a trial takes ({MAX_INT}); give a smaller one"
    if isinstance(v, str) and numeric and "str" not in kinds:
        return f"{v!r} is text, not a number; write the number without quotes"
    return None


def _check_trial(values: dict[str, Any], where: str) -> None:
    _plain(values, where)
    try:
        TrialConfig(**values)
    except ValidationError as err:
        raise ValueError(one_line(err, prefix=f"{where}: ")) from None


class _SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (the YAML spec says keys are unique;
    PyYAML would keep the last one silently)."""


def _unique_keys(loader: _SpecLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' is given twice; keep one", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


def load_yaml(text: str) -> Any:
    """A study YAML as Python data (safe: plain types only), refusing duplicate keys and a document whose
    aliases expand to more than MAX_YAML_VALUES values (an alias bomb), before anything is built from it."""
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded(node, {}) > MAX_YAML_VALUES:
            raise yaml.YAMLError(
                f"it expands to more than {MAX_YAML_VALUES:,} values through its aliases (*name); write the "
                "values out, or use fewer aliases"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded(node: yaml.Node, memo: dict) -> int:
    """How many values ``node`` stands for once every alias is expanded (a recursive one: too many)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_YAML_VALUES + 1  # while counting: an alias back to here never ends
    if isinstance(node, yaml.MappingNode):
        n = 1 + sum(_expanded(k, memo) + _expanded(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded(v, memo) for v in node.value)
    else:
        n = 1
    memo[id(node)] = n = min(n, MAX_YAML_VALUES + 1)
    return n


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study YAML; raises SpecError with one line naming the field."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(
            f"study file '{path}' not found; give the path of a study YAML such as studies/smoke.yaml"
        ) from None
    except IsADirectoryError:
        raise SpecError(
            f"'{path}' is a folder; give the path of a study YAML file such as studies/smoke.yaml"
        ) from None
    except PermissionError:
        raise SpecError(f"'{path}' cannot be read (permission denied); give a study YAML you can read") from None
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.start}); save the study YAML as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a study is a YAML mapping with at least 'name'; see studies/smoke.yaml")
    return spec_from_dict(raw, str(path))


def spec_from_dict(raw: dict, source: str = "study") -> StudySpec:
    try:
        return StudySpec(**raw)
    except ValidationError as err:
        raise SpecError(f"{source}: {_spec_error_line(err)}") from None


def _spec_error_line(err: ValidationError) -> str:
    """Pydantic tries every Domain form; report the most specific problem, naming the field."""
    errors = err.errors()
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    if len(loc) >= 2 and loc[0] == "space":
        field = f"space.{loc[1]}"
        if all(e["type"] in ("extra_forbidden", "missing") for e in errors if e["loc"][:2] == first["loc"][:2]):
            return (
                f"{field}: give one of {{grid: [...]}}, {{choice: [...]}}, {{uniform: [lo, hi]}}, "
                "{loguniform: [lo, hi]}, {randint: [lo, hi]}"
            )
        for e in errors:  # the message of the form the user wrote (the one not 'missing')
            if e["type"] != "missing" and e["type"] != "extra_forbidden" and e["loc"][:2] == first["loc"][:2]:
                sub = ".".join(str(p) for p in e["loc"][3:])
                return f"{field}{'.' + sub if sub else ''}: {e['msg'].removeprefix('Value error, ')}"
    return one_line(err)
