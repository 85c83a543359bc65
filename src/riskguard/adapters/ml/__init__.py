"""Machine-learning models behind the engine's ``Model`` protocol (see docs/models.md).

- :mod:`.artifact` — version directories, manifests, hashes; refusing tampered or foreign ones;
- :mod:`.inputs` — model inputs as compiled rule-language expressions over the environment;
- :mod:`.trees` — tree ensembles as data and the Python code generated to evaluate them;
- :mod:`.treeshap` — exact TreeSHAP (LightGBM's ``pred_contrib``), tabulated per leaf;
- :mod:`.hst` — half-space trees that keep learning as events arrive;
- :mod:`.calibration` — Platt and quantile calibration to [0, 1];
- :mod:`.serving` — the served kinds (gbm, isolation_forest, online) and ``load_model``;
- :mod:`.feedback` — labels fed back into feature state as delayed events;
- :mod:`.datasets` — creditcard, fdh (replayed through the engine) and riskguard's decisions;
- :mod:`.training` — fitting each kind into a sealed artifact;
- :mod:`.evaluation` — metrics, PSI and the evaluation report;
- :mod:`.monitor` — ``ModelMonitor``: PSI over a sliding window, as Prometheus gauges;
- :mod:`.registry` — the registry directory, activation, rollback, ``load_active``;
- :mod:`.cli` — ``riskguard model ...``.

Nothing is imported at package load, so the command line starts fast.
"""
