"""vaesweep: hyperparameter studies of the variable collapse of VAEs (Asperti 2019).

Public API:
    train_vae(config, report=None) -> TrialResult    train one VAE, plain Python
    trainable(config)                                the same, as a Ray Tune function trainable
    SettledStopper()                                 Ray Tune stopper: ends a trial on its final report
    TrialConfig                                      the validated trial configuration
    load_dataset(name, root=None, download=False)    the data registry
    load_study(path) -> StudyTables                  a study's results tables (pandas only)
    diagnose(model, images) -> Diagnosis             Table 1, the Sec. 4 laws, MI, IW-NLL of anyone's VAE
    CollapseTracker()                                in any training loop: has the collapse settled?

The layers, imports flowing one way: ``config`` and ``experiments`` (pydantic, yaml) -> ``engine``
(torch) -> ``study`` (Ray Tune) -> ``cli`` (README: "How the code is laid out"). Names load on
first use (PEP 562), so ``vaesweep.load_study`` and ``vaesweep.TrialConfig`` import neither torch nor Ray.
"""

from importlib import import_module

_PUBLIC = {
    "TrialConfig": "vaesweep.config.trial",
    "DataError": "vaesweep.config.errors",
    "TrainingDiverged": "vaesweep.config.errors",
    "load_dataset": "vaesweep.engine.data",
    "TrialResult": "vaesweep.engine.trial",
    "TrialRun": "vaesweep.engine.trial",
    "train_vae": "vaesweep.engine.trial",
    "trainable": "vaesweep.study.trainables",
    "SettledStopper": "vaesweep.study.stopping",
    "load_study": "vaesweep.study.tables",
    "diagnose": "vaesweep.engine.diagnose",
    "Diagnosis": "vaesweep.engine.diagnose",
    "CollapseTracker": "vaesweep.engine.diagnose",
}
__all__ = list(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'vaesweep' has no attribute '{name}'")
    return getattr(import_module(_PUBLIC[name]), name)
