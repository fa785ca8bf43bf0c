"""Optional integrations, each behind its pip extra: the Lightning engine (lightning.py), MLflow tracking
(tracking.py) and Optuna search (tune.py). They are leaves: they use the library's public names, and the
library reaches them only through the one switch that enables each (train.engine, track.mlflow, imgcls tune)."""
