"""Packed trials (vaesweep.engine.packing): K configurations in one set of batched kernels give each
configuration the numbers of its own TrialRun, a smaller latent dimension is exactly masked, and
packed results land as separate trial rows."""

from types import SimpleNamespace

import pytest
import torch
from conftest import recorded

from vaesweep import TrainingDiverged, TrialRun, train_vae
from vaesweep.config.errors import PackError
from vaesweep.config.folder import RAY_FOLDER
from vaesweep.config.packing import PACK_KEY, check_packable, make_packs, pack_size
from vaesweep.config.spec import SpecError, spec_from_dict
from vaesweep.engine.checkpoints import (
    find_checkpoint,
    load_run,
    load_trained,
    packed_id,
    save_run,
    split_packed_id,
)
from vaesweep.engine.losses import KLSchedule, KLSchedules, packed_loss, vae_loss
from vaesweep.engine.packing import PackedRun, train_packed
from vaesweep.study.recorder import Recorder
from vaesweep.study.space import pack_param_space
from vaesweep.study.trainables import ray_report

TRAIN_KEYS = ("train_loss", "train_recon", "train_kl", "lam_effective")


@pytest.fixture
def small(tiny):
    return {**tiny, "fid": False}


def assert_same_trial(a, b, rel=1e-4, abs_=1e-4):
    """A packed configuration's TrialResult against its own TrialRun's, to float tolerance (abs: nats;
    recon_gain is a difference of two ~500-nat float32 means)."""
    assert set(a.summary) == set(b.summary)
    for key, value in a.summary.items():
        if isinstance(value, float):
            assert b.summary[key] == pytest.approx(value, rel=rel, abs=abs_), key
        else:  # counts, flags and settled_step: exactly
            assert b.summary[key] == value, key
    assert len(a.latents) == len(b.latents)
    for ra, rb in zip(a.latents, b.latents):
        assert ra == pytest.approx(rb, rel=rel, abs=abs_)
    assert [h["epoch"] for h in a.history] == [h["epoch"] for h in b.history]
    for ha, hb in zip(a.history, b.history):
        assert {k: hb[k] for k in TRAIN_KEYS} == pytest.approx({k: ha[k] for k in TRAIN_KEYS}, rel=rel, abs=abs_)
        assert (ha["settled"], ha["settled_step"]) == (hb["settled"], hb["settled_step"])


def test_packed_configurations_equal_separate_runs(small):
    fast = {"settle_patience": 2, "settle_min_steps": 0, "settle_law_tol": 100.0}  # the 3rd settles at epoch 2
    cfgs = [
        {**small, "lam": 0.5, "seed": 1, "track_every": 3},
        {**small, "lam": 2.0, "seed": 2, "latent_dim": 6, "free_bits": 0.1, "track_every": 3, **fast},
        {**small, "lam": 1.0, "seed": 3, "latent_dim": 3, "warmup_steps": 5, "track_every": 3, **fast},
        {**small, "seed": 4, "capacity_max": 5.0, "capacity_steps": 10, "gamma": 10.0, "track_every": 3},
    ]
    reports = []
    packed = train_packed(cfgs, report=reports.append)
    assert len(reports) == small["epochs"] and all(len(r) == len(cfgs) for r in reports)
    for cfg, p, metrics in zip(cfgs, packed, reports[-1]):
        seen = []
        alone = train_vae(cfg, report=seen.append)
        assert_same_trial(alone, p)
        assert set(metrics) == set(seen[-1])  # the same report keys as the trial function
        assert len(metrics["latents"]) == cfg["latent_dim"]
        for ta, tb in zip(seen[-1]["trace"], metrics["trace"]):
            assert ta["step"] == tb["step"] and ta["var_mu"] == pytest.approx(tb["var_mu"], rel=1e-4, abs=1e-6)
    assert packed[0].summary != packed[1].summary  # the configurations did not collapse into one
    assert [p.summary["settled"] for p in packed] == [False, False, True, False]  # each its own settle rule


def test_packed_loss_is_each_configurations_vae_loss():
    """Eq. (6) per configuration, masked variables contributing exactly nothing (free bits too)."""
    torch.manual_seed(0)
    cfgs = [
        dict(lam=0.5, latent=3, free_bits=0.2),
        dict(lam=2.0, latent=5, free_bits=0.1),
        dict(lam=1.0, latent=2, warmup=10),
        dict(latent=5, capacity=(4.0, 20), gamma=30.0),
    ]
    scheds = [
        KLSchedule(
            c.get("lam", 1.0),
            c.get("warmup", 0),
            c.get("free_bits", 0.0),
            c["capacity"][0] if "capacity" in c else None,
            c["capacity"][1] if "capacity" in c else 0,
            c.get("gamma", 1000.0),
        )
        for c in cfgs
    ]
    k, b, big, step = len(cfgs), 8, 5, 7
    x = torch.rand(k, b, 1, 28, 28)
    logits, mu, logvar = torch.randn(k, b, 1, 28, 28), torch.randn(k, b, big), torch.randn(k, b, big)
    mask = torch.zeros(k, big)
    for i, c in enumerate(cfgs):
        mask[i, : c["latent"]] = 1
    mu, logvar = mu * mask[:, None], logvar * mask[:, None]  # what the padded model's zero rows give
    coef = torch.tensor(
        [
            [
                s.lam if s.warmup_steps <= 0 else s.lam * min(1, step / s.warmup_steps),
                (s.capacity_max or 0) * min(1, step / s.capacity_steps) if s.capacity_steps else 0.0,
            ]
            for s in scheds
        ]
    )
    sched = KLSchedules.of(scheds, torch.device("cpu"))
    assert torch.equal(sched.coefficients(step, 1)[0], coef)  # lambda(step) and C(step), eq. (6) and Sec. 6.1
    loss, recon, kl = packed_loss(logits, x, mu, logvar, mask, coef, "bce", sched)
    for i, (c, s) in enumerate(zip(cfgs, scheds)):
        n = c["latent"]
        one = KLSchedules.of([s], torch.device("cpu"))
        want, want_recon, want_kl = vae_loss(
            logits[i], x[i], mu[i, :, :n], logvar[i, :, :n], one.coefficients(step, 1)[0], "bce", one
        )
        assert loss[i].item() == pytest.approx(want.item(), rel=1e-6)
        assert torch.equal(recon[i], want_recon)
        assert torch.equal(kl[i, :, :n], want_kl) and torch.all(kl[i, :, n:] == 0)


def test_smaller_latent_dimension_is_masked_exactly(small):
    cfgs = [{**small, "latent_dim": 2, "seed": 5, "free_bits": 0.05}, {**small, "latent_dim": 5, "seed": 6}]
    run = PackedRun(cfgs)
    for _ in run.epochs():
        pass
    # the padded variables of the latent-2 model never moved from zero: no gradient ever reached them
    p = run.params
    for head in ("mu", "logvar"):
        assert torch.all(p[f"{head}.weight"][0, 2:] == 0) and torch.all(p[f"{head}.bias"][0, 2:] == 0)
    assert torch.all(p["decoder.0.weight"][0, :, 2:] == 0)
    assert p["decoder.0.weight"][0, :, :2].abs().sum() > 0 and p["decoder.0.weight"][1, :, 2:].abs().sum() > 0
    # and its numbers are those of the same configuration packed alone (no padding) and of its TrialRun
    alone = train_packed(cfgs[:1])[0]
    assert_same_trial(alone, run.results()[0], rel=1e-5, abs_=1e-6)
    assert_same_trial(train_vae(cfgs[0]), run.results()[0])


def test_conv_with_batchnorm_packs(small):
    """The conv net's BatchNorm statistics stay per configuration. Tolerance is looser than dense:
    the conv biases before BatchNorm have zero true gradient, and Adam scales their float noise to
    +-lr, which reaches the eval-mode (running-statistics) metrics; and Adam's first steps are ~lr * sign(grad),
    so gradients near 0 turn the rounding of two conv layouts (the pack's grouped NCHW, the trial's channels_last)
    into 1e-4-relative differences of the small KL term."""
    conv = {**small, "arch": "conv", "conv_width": 8, "epochs": 1, "max_train": 192, "max_eval": 100}
    cfgs = [{**conv, "lam": 0.5, "seed": 1}, {**conv, "lam": 2.0, "seed": 2, "latent_dim": 6}]
    run = PackedRun(cfgs)
    for _ in run.epochs():
        pass
    for i, cfg in enumerate(cfgs):
        alone = TrialRun(cfg)
        for _ in alone.epochs():
            pass
        a, b = alone.result(), run.results()[i]
        assert {k: b.history[0][k] for k in TRAIN_KEYS} == pytest.approx(
            {k: a.history[0][k] for k in TRAIN_KEYS}, rel=1e-3
        )
        bn_a, bn_b = alone.model.encoder[1], run.model(i).encoder[1]
        assert torch.allclose(bn_a.running_var, bn_b.running_var, rtol=1e-3)
        assert bn_b.num_batches_tracked == bn_a.num_batches_tracked == 3
        assert b.summary["recon"] == pytest.approx(a.summary["recon"], rel=1e-3)


def test_checkpoint_resumes_packed_and_as_trialrun(small):
    cfgs = [
        {**small, "epochs": 3, "lam": 0.5, "seed": 1},
        {**small, "epochs": 3, "lam": 2.0, "seed": 2, "latent_dim": 6},
    ]
    full = train_packed(cfgs)
    first = PackedRun(cfgs)
    next(first.epochs())
    states = first.state_dicts()
    resumed = PackedRun(cfgs)
    resumed.load_state_dicts(states)
    for _ in resumed.epochs():
        pass
    for a, b in zip(full, resumed.results()):
        assert a.summary == b.summary and a.latents == b.latents
    # each state is a TrialRun state dict: the configuration can go on alone
    alone = TrialRun(cfgs[1])
    alone.load_state_dict(states[1])
    for _ in alone.epochs():
        pass
    assert_same_trial(full[1], alone.result())


def test_a_diverging_configuration_leaves_the_others_untouched(small):
    ok = {**small, "lam": 1.0, "seed": 1}
    bad = {**small, "seed": 2, "capacity_max": 10.0, "gamma": 1e38}  # |KL - C| * 1e38 overflows
    reports = []
    run = PackedRun([ok, bad])
    for metrics in run.epochs():
        reports.append(metrics)
    assert [set(r[1]) for r in reports] == [{"diverged"}] * small["epochs"]
    assert "epoch 1" in reports[0][1]["diverged"]
    assert_same_trial(train_vae(ok), run.result(0))
    with pytest.raises(TrainingDiverged, match="configuration 1"):
        run.results()


def test_packs_need_shared_settings(small):
    from vaesweep import TrialConfig

    with pytest.raises(PackError, match="'lr'"):
        check_packable([TrialConfig(**small), TrialConfig(**{**small, "lr": 1e-2})])
    with pytest.raises(PackError, match="'arch'"):
        PackedRun([small, {**small, "arch": "conv"}])


def fake_trial(trial_id, config, status="RUNNING"):
    return SimpleNamespace(trial_id=trial_id, config=config, status=status, error_file=None)


def test_recorder_splits_packed_results_into_trial_rows(small, tmp_path):
    shared = {**small, "epochs": 1}
    items = [{"lam": 0.5, "seed": 0, "latent_dim": 3}, {"lam": 2.0, "seed": 1, "latent_dim": 4}]
    reports = []
    train_packed([{**shared, **it} for it in items], report=reports.append)
    trial = fake_trial("abc_00000", {**shared, PACK_KEY: items})
    rec = Recorder(tmp_path, flush_every_s=1e9)
    rec.on_trial_start(0, [trial], trial)
    rec.on_trial_result(0, [trial], trial, {"epoch": 1, "packed": [reports[0][0], {"diverged": "loss became nan"}]})
    trial.status = "TERMINATED"
    rec.on_trial_complete(0, [trial], trial)
    tables = rec.tables()
    rows = tables.trials.set_index("trial_id")
    assert list(rows.index) == ["abc_00000-p0", "abc_00000-p1"]
    assert rows.loc["abc_00000-p0", ["lam", "seed", "latent_dim", "status"]].tolist() == [0.5, 0, 3, "done"]
    assert rows.loc["abc_00000-p1", ["lam", "seed", "latent_dim", "status"]].tolist() == [2.0, 1, 4, "failed"]
    assert rows.loc["abc_00000-p1", "error"] == "loss became nan"
    assert rows.loc["abc_00000-p0", "elbo"] == reports[0][0]["elbo"]
    assert list(tables.epochs["trial_id"]) == ["abc_00000-p0"]
    assert len(tables.latents) == 3 and set(tables.latents["trial_id"]) == {"abc_00000-p0"}


def test_study_packs_compatible_grid_configurations():
    spec = spec_from_dict(
        {
            "name": "p",
            "base": {"epochs": 2},
            "pack": 4,
            "resources": {"gpu": 0.5},  # conv trials pack on a GPU only
            "seeds": 2,
            "space": {
                "arch": {"grid": ["dense", "conv"]},
                "latent_dim": {"grid": [2, 8, 4]},
                "lam": {"grid": [0.5, 1.0]},
            },
        }
    )
    space = pack_param_space(spec)
    packs = space[PACK_KEY]["grid_search"]
    configs = [{**{k: v for k, v in space.items() if k != PACK_KEY}, **item} for pack in packs for item in pack]
    assert len(configs) == spec.n_grid_points() == 24
    assert {(c["arch"], c["latent_dim"], c["lam"], c["seed"]) for c in configs} == {
        (a, d, lam, s) for a in ("dense", "conv") for d in (2, 8, 4) for lam in (0.5, 1.0) for s in (0, 1)
    }
    assert all(len(p) <= 4 and len({c["arch"] for c in p}) == 1 for p in packs)
    assert all(c["epochs"] == 2 for c in configs)
    # sorted by latent dimension: little padding inside a pack
    assert [c["latent_dim"] for c in packs[0]] == [2, 2, 2, 2]
    assert make_packs([{"latent_dim": 4}, {"latent_dim": 4, "lr": 0.1}], 8) == [
        [{"latent_dim": 4}],
        [{"latent_dim": 4, "lr": 0.1}],
    ]


def test_pack_setting_of_a_study():
    grid = {"name": "p", "space": {"lam": {"grid": [0.5, 1.0]}}}
    assert pack_size(spec_from_dict(grid)) == 1  # auto, no GPU per trial: off
    assert pack_size(spec_from_dict({**grid, "resources": {"gpu": 0.5}})) == 16  # auto on a GPU
    assert pack_size(spec_from_dict({**grid, "resources": {"gpu": 1}, "base": {"device": "cpu"}})) == 1
    assert pack_size(spec_from_dict({**grid, "pack": 3})) == 3
    assert pack_size(spec_from_dict({**grid, "pack": False})) == 1  # YAML's bare off
    assert pack_size(spec_from_dict({**grid, "resources": {"gpu": 1}, "scheduler": {"type": "asha"}})) == 1
    with pytest.raises(SpecError, match="pack: a scheduler"):
        spec_from_dict({**grid, "pack": 4, "scheduler": {"type": "asha"}})
    with pytest.raises(SpecError, match="pack: give auto, off"):
        spec_from_dict({**grid, "pack": "many"})
    conv = {**grid, "base": {"arch": "conv"}, "pack": 4}  # packed conv trials are slower on a CPU
    with pytest.raises(SpecError, match=r"pack: conv trials on a CPU train slower packed .* set pack: off"):
        spec_from_dict(conv)
    with pytest.raises(SpecError, match="pack: conv trials on a CPU"):
        spec_from_dict({**conv, "base": {"arch": "conv", "device": "cpu"}, "resources": {"gpu": 1}})
    assert pack_size(spec_from_dict({**conv, "resources": {"gpu": 0.5}})) == 4
    assert pack_size(spec_from_dict({**conv, "pack": "auto", "resources": {"gpu": 0.5}})) == 16
    assert pack_size(spec_from_dict({**conv, "pack": "auto"})) == 1


@pytest.mark.slow
def test_packed_study_on_ray(tmp_path):
    """One small real study: two configurations in one Ray trial, two trial rows, TrialRun's numbers."""
    from vaesweep.study.runner import run_study
    from vaesweep.study.tables import load_study

    base = {"epochs": 1, "max_train": 128, "max_eval": 64, "hidden": [16], "batch_size": 64, "fid": False}
    spec = spec_from_dict(
        {
            "name": "packed",
            "base": base,
            "space": {"lam": {"grid": [0.5, 2.0]}},
            "pack": 2,
            "resources": {"cpu": 1},
            "retries": 0,
            "storage": str(tmp_path),
        }
    )
    import ray

    try:
        trials = load_study(run_study(spec, quiet=True)).trials.sort_values("lam")
    finally:
        ray.shutdown()  # run_study started a Ray of its own in this process
    assert len(trials) == 2 and trials["trial_id"].str.endswith(("-p0", "-p1")).all()
    assert trials["trial_id"].str[:-3].nunique() == 1  # one Ray trial
    assert (trials["status"] == "done").all()
    for row in trials.itertuples():
        alone = train_vae({**base, "lam": row.lam, "seed": 0, "threads": 1})
        assert row.elbo == pytest.approx(alone.summary["elbo"], rel=1e-4)
        assert not row.settled and not alone.summary["settled"]  # the settled column: one epoch is too early


def ray_reports(run) -> list[dict]:
    """What ``run_under_ray`` reports for each epoch of ``run`` (node names the machine)."""
    return [ray_report(run, metrics, node="node-0") for metrics in run.epochs()]


@pytest.mark.parametrize("fid", [False, True])
def test_packed_and_plain_trials_fill_the_same_columns(fid, tmp_path):
    """Every table of a study gets the same columns from a packed pair as from the same two
    configurations trained one at a time, and a packed result has TrialRun's summary keys."""
    shared = {
        "epochs": 2,
        "max_train": 256,
        "max_eval": 128,
        "hidden": [32],
        "latent_dim": 3,
        "batch_size": 64,
        "threads": 1,
        "track_every": 2,
        "fid": fid,
        "fid_samples": 128,
    }
    items = [{"lam": 0.5, "seed": 0}, {"lam": 2.0, "seed": 1, "latent_dim": 2}]
    packed = PackedRun([{**shared, **it} for it in items])
    reports = ray_reports(packed)
    assert all(m["node"] == "node-0" for r in reports for m in r["packed"])
    packed_tables = recorded(tmp_path / "packed", {**shared, PACK_KEY: items}, reports, trial_id="p_00000")
    for i, item in enumerate(items):
        plain = TrialRun({**shared, **item})
        plain_tables = recorded(tmp_path / f"plain{i}", {**shared, **item}, ray_reports(plain), trial_id="a_00000")
        for table in ("trials", "epochs", "latents", "latent_history", "trace"):
            want, got = getattr(plain_tables, table), getattr(packed_tables, table)
            assert len(want) and len(got), table
            assert list(got.columns) == list(want.columns), table
        assert "node" in plain_tables.epochs.columns
        assert ("fid_prior" in plain_tables.trials.columns) == fid
        assert list(packed.result(i).summary) == list(plain.result().summary)


def test_checkpoint_layout_of_a_packed_trial(small, tmp_path):
    """A pack's Ray checkpoint holds one TrialRun state per configuration; a study finds each
    configuration's latest one by its trial id ``<ray id>-p<i>``."""
    cfgs = [{**small, "epochs": 1, "lam": 0.5, "seed": 1}, {**small, "epochs": 1, "lam": 2.0, "seed": 2}]
    run = PackedRun(cfgs)
    for _ in run.epochs():
        pass
    trial = tmp_path / "study" / RAY_FOLDER / "exp" / "packed_trainable_ab12_00003_3_lam=1"
    for n in (0, 1):
        (trial / f"checkpoint_00000{n}").mkdir(parents=True)
        save_run(run, trial / f"checkpoint_00000{n}")
    assert split_packed_id(packed_id("ab12_00003", 1)) == ("ab12_00003", 1)
    assert split_packed_id("ab12_00003") == ("ab12_00003", None)
    found = find_checkpoint(tmp_path / "study", packed_id("ab12_00003", 1))
    assert found is not None and found.parents[1].name == "checkpoint_000001"  # the latest
    assert load_trained(found)[0].lam == 2.0
    assert find_checkpoint(tmp_path / "study", "ab12_00003") is None  # the pack holds no plain trial.pt
    restored = PackedRun(cfgs)
    load_run(restored, trial / "checkpoint_000001")
    assert [r.summary for r in restored.results()] == [r.summary for r in run.results()]
