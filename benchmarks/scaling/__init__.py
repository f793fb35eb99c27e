"""Scaling study of SmartPretrain pre-training (``python benchmarks/scaling_sweep.py``; protocol in docs/SCALING.md).

One job per module:

* ``plan``      the points of a sweep (pre-training data size x mix x seed, plus scratch baselines);
* ``results``   the results table (``results.json`` / ``results.csv``) and the export of the result files;
* ``schedule``  running the points through a runner, one after another or several at once, within a deadline;
* ``processes`` the project CLIs a sweep has running (started, waited for, stopped on an interruption);
* ``data``      the synthetic pools, the labelled set, the val split and the pre-training subsets;
* ``flops``     FLOPs of one training step, counted on real batches;
* ``runner``    the runner that runs a point with ``train_ssl.py`` / ``train.py`` / ``val.py``;
* ``cli``       the command line.
"""
