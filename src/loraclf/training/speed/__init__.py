"""Speed levers of the training step, train.prefix_cache and train.fast_dropout (auto: on wherever they apply).

prefix runs the frozen layers below the lowest adapter once per training row; dropout draws cheaper dropout masks.
Each changes how a step computes, never what the model, its checkpoints or its saved adapter are. They may import
model (the architecture tables), data, config and base; never the rest of training, which builds them in setup and
calls them from the loop.
"""
