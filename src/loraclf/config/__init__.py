"""The config: every default as typed dataclasses (schema), reading a YAML file and `key=value` overrides into one
validated Config (load), and the type, range and cross-key checks that report every problem together (validate).
It may import only loraclf.base (errors, the precision vocabulary, packaged-source names) and loraclf.task (the
problem types with their losses and metrics), and none of them loads torch, so `loraclf config` and `validate` run without it. Callers import from this package, not its modules.
"""

from .schema import (  # noqa: F401
    PRECISIONS,
    ModelConfig,
    DataConfig,
    AdapterConfig,
    OptimizerConfig,
    TrainConfig,
    EvalConfig,
    OutputConfig,
    BudgetConfig,
    AugmentConfig,
    AdaptConfig,
    Config,
    describe_keys,
    diff_from_defaults,
    flatten,
)
from .load import (  # noqa: F401
    parse_override,
    set_path,
    load_yaml_text,
    read_yaml,
    from_dict,
    load_config,
    augment_config,
    resolve_paths,
    config_tree,
    apply_overrides,
    merge,
)
from .validate import (  # noqa: F401
    MAX_BATCH,
    MAX_RANK,
    MAX_SEED,
    MAX_STEPS,
    PREDICT_BATCH,
    INT8_PREDICT_BATCH,
    TRACKERS,
    prefix_cache_clashes,
)
