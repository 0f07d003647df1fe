"""The model: a base encoder with a classification head and a PEFT adapter, and the trainable-parameter budget.

It owns every decision about which modules are adapted and trained, the one path from a base model to the model
that trains (build.attach_adapter), saving and reloading a run's model, and the exact trainable count. It may
import data (only to count a data set's labels for `loraclf budget`), runs, config, task and base; never training,
inference or the services above.

    build          config, tokenizer and base model; the head plan; attach the adapter; save, reload, merge
    methods        each PEFT method's config, and the extra steps some need (MethodHooks: AdaLoRA, PiSSA)
    architectures  per-family module names: target presets and head layout (a leaf: it imports only the errors)
    budget         the exact count, budget.max_trainable_params, adapter.r=auto, the `loraclf budget` report
    counting       the model's shape without weights, the adapted model on the meta device, rank fitting
    param_table    the report's rows: a built model's parameters by role
"""

from .build import (  # noqa: F401
    quiet_transformers,
    load_model_config,
    load_tokenizer,
    load_base,
    peft_config,
    HEADS,
    HeadPlan,
    head_plan,
    attach_adapter,
    build_model,
    save_adapter,
    load_trained,
    check_finite,
    merge_adapter,
)
