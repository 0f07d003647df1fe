"""TODO: model"""

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
    load_run_model,
    merge_adapter,
)
