"""Reading a config: defaults <- YAML file <- `key=value` overrides, validated together into a Config.

YAML is read with a loader that refuses a key given twice. Relative data paths become absolute, so the config.yaml
written into a run names the exact files used and `--resume` works from any folder. `config_tree` and
`apply_overrides` build the same tree from what the Python API accepts (a path, a dict or a Config).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..base.errors import ConfigError
from .schema import AugmentConfig, Config
from .validate import build, cross_checks


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError([f"override '{text}' must look like section.key=value (e.g. train.learning_rate=3e-4)"])
    key, raw = text.split("=", 1)
    if raw.strip() in ("|", ">"):  # YAML reads these alone as an empty block scalar; as a value they are meant literally
        return key.strip().split("."), raw.strip()
    try:
        value = load_yaml_text(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an integer over Python's 4300-digit limit
        value = raw
    return key.strip().split("."), value


def set_path(tree: dict, path: list[str], value) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[path[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:  # an unhashable key: the base loader reports it as a YAML error
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                    f"keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str):
    """Parse YAML safely (no tags that build objects), refusing duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"config file not found: {p} (give the path of a YAML file, e.g. configs/agnews_minilm.yaml)"])
    try:
        data = load_yaml_text(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError([f"{p} is not valid YAML: {first}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{p} must hold a mapping of sections (model:, data:, train:, ...), got {type(data).__name__}"])
    return data


def from_dict(data: dict) -> Config:
    """Build and validate a Config; raises ConfigError listing every problem."""
    problems: list[str] = []
    cfg = build(Config, data, "", problems)
    problems += cross_checks(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- key=value overrides, validated together."""
    data = read_yaml(path) if path else {}
    problems: list[str] = []
    for text in overrides or []:
        try:
            keys, value = parse_override(text)
        except ConfigError as e:
            problems += e.problems
            continue
        set_path(data, keys, value)
    if problems:
        raise ConfigError(problems)
    resolve_paths(data, Path(path).resolve().parent if path else None)
    return from_dict(data)


def augment_config(path: str | Path | None = None, **values) -> AugmentConfig:
    """The augment: section of the YAML config at path (else the defaults) <- values that are not None, validated."""
    aug = load_config(path).augment if path else AugmentConfig()
    merged = {**dataclasses.asdict(aug), **{k: v for k, v in values.items() if v is not None}}
    return from_dict({"augment": merged}).augment


_PATH_KEYS = ("train", "validation", "test", "unlabeled", "target_eval")


def resolve_paths(data: dict, base: Optional[Path]) -> None:
    """Relative data paths (and a local model folder) become absolute: relative to the current folder if they
    exist there, else to the YAML file's folder (base). The run's config.yaml then names the exact files used,
    and --resume works from any folder."""
    section = data.get("data")
    if isinstance(section, dict):
        for key in _PATH_KEYS:
            if key in section:
                section[key] = _absolute(section[key], base)
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("name_or_path"), str) and ":" not in model["name_or_path"]:
        model["name_or_path"] = _absolute(model["name_or_path"], None)


def _absolute(value, base: Optional[Path]):
    if not isinstance(value, str) or not value or Path(value).is_absolute():
        return value
    try:
        if Path(value).exists():
            return os.path.abspath(value)
        if base is not None and (base / value).exists():
            return os.path.abspath(base / value)
    except (OSError, ValueError):  # a name too long or with a NUL byte is no existing path; validation reports it
        pass
    return value


# ------------------------------------------------------------------------------------- the Python API's tree


def config_tree(config: Union[str, Path, dict, Config, None]) -> dict:
    """The config as a plain dict of sections, paths made absolute as `load_config` makes them."""
    if config is None:
        return {}
    if isinstance(config, Config):
        return config.to_dict()
    if isinstance(config, dict):
        tree = copy.deepcopy(config)
        resolve_paths(tree, None)
        return tree
    if isinstance(config, (str, Path)):
        tree = read_yaml(config)
        resolve_paths(tree, Path(config).resolve().parent)
        return tree
    raise ConfigError([f"config must be a YAML path, a dict or a loraclf Config, got {type(config).__name__}"])


def apply_overrides(tree: dict, overrides: dict) -> None:
    """Dotted keys set one value; a section given as a dict is merged into that section."""
    for key, value in overrides.items():
        if "." not in key and isinstance(value, dict):
            section = tree.get(key)
            tree[key] = merge(section if isinstance(section, dict) else {}, value)
        else:
            set_path(tree, key.split("."), value)
    resolve_paths(tree, None)


def merge(base: dict, extra: dict) -> dict:
    """base with extra laid over it, nested dicts merged key by key (neither is changed)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
