"""Speed and memory options of the project's models, kept apart from the model code.

``acceleration.options`` (no torch import: the scripts' --help stays fast) holds :class:`SpeedOptions`, its presets
and the command-line flags; ``acceleration.apply.apply(model, options)`` installs the fused or compiled forms into a
model built from ``layers/ modules/ predictors/`` (whose code is the plain reference math); ``acceleration.kernels``
holds those forms; ``acceleration.cuda_graph_step`` the fixed-shape training step replayed as a CUDA graph;
``acceleration.edge_lists_in_workers`` QCNet's edge lists built in the data-loader workers. Speed options are
run-time settings: none of them is stored in a checkpoint, and a checkpoint evaluates the same under any of them.
"""
