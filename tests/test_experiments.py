"""The registry of experiment kinds (vaesweep.experiments): a kind declared in one module is checked by the
spec, gets its settings into the trials' config and its trainable from the runner, and its sections in the report."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field
from test_report import assert_refs_exist, synthetic_study

from analysis.chart import Chart, new_figure
from analysis.report import build_report
from vaesweep import experiments
from vaesweep.config.packing import pack_size
from vaesweep.config.spec import SpecError, StudySpec, spec_from_dict
from vaesweep.experiments.kind import Kind
from vaesweep.study import space, tuner

# --- a toy kind, declared as a kind module would declare it ---------------------------------------


class ToySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rounds: int = Field(2, ge=1)


def toy_check(spec: StudySpec) -> None:
    if spec.kind_settings.rounds > min(spec.trial_values("latent_dim")):
        raise ValueError("toy.rounds: more rounds than latent variables; lower it")


def toy_trainable(config: dict) -> None:
    """Never run here: the runner only has to hand it to Ray."""


def toy_chart(study) -> Chart:
    tables = study.tables
    fig, (ax,) = new_figure()
    ax.plot(tables.epochs["epoch"], tables.epochs["train_loss"])
    return Chart("toy_rounds", "The toy kind: rounds", f"{len(tables.epochs)} epochs drawn.", fig)


TOY = Kind(
    name="toy",
    settings=ToySettings,
    check=toy_check,
    trainable=f"{__name__}:toy_trainable",
    sections=(f"{__name__}:toy_chart",),
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(experiments.KINDS, "toy", TOY)
    return TOY


class FakeTuner:
    """Stands in for ray.tune.Tuner: keeps what build_tuner gives it."""

    @staticmethod
    def can_restore(path) -> bool:
        return False

    def __init__(self, runnable, **kwargs):
        self.runnable, self.kwargs = runnable, kwargs


# --- the registry ---------------------------------------------------------------------------------


def test_the_configuration_leaf_imports_neither_torch_nor_ray():
    code = (
        "import sys, vaesweep.config.spec, vaesweep.experiments; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_experiment_names_the_field_and_the_known_kinds():
    with pytest.raises(SpecError, match=r"^study: experiment: unknown kind 'noize'; give one of train, noise, method$"):
        spec_from_dict({"name": "n", "experiment": "noize"})
    with pytest.raises(SpecError, match=r"^experiment: unknown kind 'noize'; give one of train, noise, method$"):
        experiments.kind("noize")


def test_every_kind_names_code_that_exists():
    for name, kind in experiments.KINDS.items():
        assert kind.name == name
        for path in (kind.trainable, kind.packed_trainable, kind.driver, *kind.sections):
            assert path is None or callable(experiments.resolve(path)), path


def test_settings_go_under_the_kinds_name_only():
    with pytest.raises(SpecError, match="kind_settings: unknown key; write a kind's settings under its name"):
        spec_from_dict({"name": "n", "experiment": "noise", "kind_settings": {}})
    with pytest.raises(SpecError, match="train: unknown key"):  # train has no settings
        spec_from_dict({"name": "n", "train": {"epochs": 3}})
    # a saved spec copy writes absent settings as null; it still loads
    assert spec_from_dict({"name": "n", "noise": None}).kind_settings is None


# --- a toy kind registered in a test --------------------------------------------------------------


def test_toy_kind_is_validated_with_its_settings(toy):
    spec = spec_from_dict({"name": "t", "experiment": "toy", "toy": {"rounds": 3}, "base": {"latent_dim": 4}})
    assert spec.kind is toy and spec.kind_settings == ToySettings(rounds=3)
    assert spec_from_dict({"name": "t", "experiment": "toy"}).kind_settings == ToySettings()  # the defaults
    saved = spec.model_dump(mode="json")  # the study folder's copy: settings under the kind's name
    assert saved["toy"] == {"rounds": 3} and "kind_settings" not in saved
    assert StudySpec(**saved) == spec
    with pytest.raises(SpecError, match="give one of train, noise, method, toy$"):
        spec_from_dict({"name": "t", "experiment": "toi"})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"toy": {"rounds": 0}}, r"^study: toy\.rounds: Input should be greater than or equal to 1$"),
        ({"toy": {"round": 2}}, r"^study: toy\.round: unknown key"),
        ({"toy": {"rounds": 5}, "space": {"latent_dim": {"grid": [4, 8]}}}, r"^study: toy\.rounds: more rounds"),
        (
            {"experiment": "train", "toy": {"rounds": 2}},
            r"^study: toy: settings of experiment: toy; add 'experiment: toy'",
        ),
        ({"pack": 4}, r"^study: pack: the toy experiment trains one model per trial; set pack: off$"),
    ],
)
def test_toy_kind_spec_errors_name_the_field(toy, change, message):
    with pytest.raises(SpecError, match=message):
        spec_from_dict({"name": "t", "experiment": "toy", **change})


def test_toy_kind_reaches_the_runner(toy, tmp_path, monkeypatch):
    spec = spec_from_dict({"name": "t", "experiment": "toy", "toy": {"rounds": 3}, "resources": {"cpu": 1, "gpu": 0.5}})
    assert space.param_space(spec)["_toy"] == {"rounds": 3}
    assert pack_size(spec) == 1  # not packable: pack auto on a GPU stays off
    monkeypatch.setattr(tuner.tune, "Tuner", FakeTuner)
    monkeypatch.setattr(tuner.tune, "with_resources", lambda function, resources: function)
    built = tuner.build_tuner(spec, tmp_path, quiet=True)
    assert built.runnable is toy_trainable and built.kwargs["param_space"]["_toy"] == {"rounds": 3}


def test_toy_kind_chart_comes_first_in_the_report(toy, tmp_path):
    study = synthetic_study(
        tmp_path / "toy", archs=("dense",), dims=(4,), lams=(2.0,), seeds=(0,), fid=False, lambda_star=False
    )
    (study / "study.yaml").write_text(yaml.safe_dump({"name": "toy", "experiment": "toy", "toy": {"rounds": 2}}))
    index = build_report(study)
    assert "toy_rounds.png" in assert_refs_exist(index)
    page = index.read_text()
    assert "<h2>The toy kind: rounds</h2>" in page
    assert "3 epochs drawn." in page
    assert page.index("toy_rounds.png") < page.index("table1.png")  # the kind's charts lead
