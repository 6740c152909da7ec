"""FacialNet in JAX/Flax: gender and age-group recognition from face images.

The modules at this level are the commands (`python -m facialnet_jax.evaluate`, `predict`,
`cross_validate`, `export`, `benchmark`, `demo_data`; training is `launch.py`). The folders hold
what they are built from, each importing only from those listed before it: `runtime` (process
plumbing), `data` (data sets and reading), `reports` (measures and pictures), `training`
(model, compiled steps, checkpoints, runs) and `inference` (photos and videos to predictions).
"""
