"""The config: defaults in one place, YAML files and overrides holding differences, every problem reported together
with a suggestion, paths resolved against the file, and the recipes in configs/ resolving as written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, need
from loraclf import cli
from loraclf.base.errors import ConfigError
from loraclf.config import Config, load_config
from loraclf.task import MULTI


def test_defaults_live_in_one_place_and_yaml_holds_differences(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  learning_rate: 3e-4\nadapter:\n  r: 4\n")
    cfg = load_config(f, ["train.num_train_epochs=2", "data.text_column=[title, description]"])
    assert cfg.train.learning_rate == 3e-4 and cfg.adapter.r == 4 and cfg.train.num_train_epochs == 2.0
    assert cfg.data.text_column == ["title", "description"]
    assert cfg.train.weight_decay == Config().train.weight_decay  # untouched keys keep the defaults


def test_all_config_problems_are_reported_together_with_suggestions():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["trian.learning_rate=1", "adapter.method=lroa", "train.learning_rate=-1",
                           "train.per_device_train_batch_size=abc", "adapter.lora_dropout=1.5"])
    problems = e.value.problems
    assert len(problems) == 5
    text = " | ".join(problems)
    assert "unknown key 'trian' (did you mean 'train'?)" in text
    assert "did you mean 'lora'?" in text
    assert "'train.learning_rate' must be > 0" in text
    assert "'train.per_device_train_batch_size' expected an integer" in text
    assert "'adapter.lora_dropout' must be < 1" in text


def test_unknown_nested_key_and_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"unknown key 'train.learning_rat' \(did you mean 'learning_rate'\?\)"):
        load_config(None, ["train.learning_rat=1e-3"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["train.learning_rate"])


def test_config_command_prints_resolved_yaml(capsys):
    assert cli.main(["config", "train.learning_rate=2e-3"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["learning_rate"] == 2e-3
    assert set(resolved) >= {"model", "data", "adapter", "train", "eval", "output"}


def test_seed_recipe_config_resolves():
    cfg = load_config(ROOT / "configs" / "agnews_roberta_seed.yaml")
    assert cfg.model.name_or_path == "roberta-base" and cfg.data.name == "ag_news"
    assert (cfg.adapter.r, cfg.adapter.lora_alpha, cfg.adapter.lora_dropout) == (11, 7, 0.05)
    assert (cfg.train.learning_rate, cfg.train.weight_decay, cfg.train.warmup_steps) == (1e-4, 0.001, 1000)
    assert (cfg.train.per_device_train_batch_size, cfg.eval.per_device_eval_batch_size, cfg.eval.eval_steps) == (32, 64, 500)
    assert (cfg.data.validation_split, cfg.data.split_seed, cfg.train.num_train_epochs) == (640, 42, 2)


def test_paths_in_a_config_file_are_resolved_and_outputs_stay_in_the_run_folder(tmp_path, tiny_bert, tiny_data):
    """Relative data paths in a YAML file resolve against the file's folder; `config` prints them absolute."""
    sub = tmp_path / "cfg"
    sub.mkdir()
    shutil.copy(tiny_data["train"], sub / "train.csv")
    (sub / "c.yaml").write_text("data:\n  train: train.csv\n")
    cfg = load_config(sub / "c.yaml")
    assert Path(cfg.data.train) == sub / "train.csv" and Path(cfg.data.train).is_absolute()
    for bad in ("..", "a/b", "../x", "/abs"):
        with pytest.raises(Exception, match="plain folder name"):
            load_config(None, [f"output.run_name={bad}"])


def test_label_delimiter_given_as_a_bare_pipe_on_the_command_line(tmp_path):
    """`data.label_delimiter=|` is what a user types after reading "set data.label_delimiter='|'" (the shell eats
    the quotes). YAML reads a bare | as an empty block scalar, so the key silently became '' (no delimiter) and the
    run then refused the '|'-joined cells, telling the user to set what they had set (`label_delimiter: |` in a YAML
    file does the same). Either the pipe is taken as the delimiter, or the empty value is refused; never an empty
    delimiter read as none."""
    try:
        cfg = load_config(None, [f"model.problem_type={MULTI}", "data.label_delimiter=|"])
    except ConfigError as e:
        assert "data.label_delimiter" in str(e)
        return
    assert cfg.data.label_delimiter == "|"


# ------------------------------------------------------------------------------------------ the README's examples


EXAMPLES = ("vader_regression", "ag_digest_multilabel", "ag_pairs", "trec50_focal", "speeches_chunks",
            "trec6_calibrated")


def leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_config_runs_as_the_readme_says(name, tmp_path, monkeypatch):
    """Each example is headed by its command, which the README or a docs/ page shows; it states only differences from the defaults,
    validates, and its data splits load with the labels of its problem type (no training)."""
    import yaml

    from loraclf.data import load_splits

    path = ROOT / "configs" / f"{name}.yaml"
    command = f"loraclf train configs/{name}.yaml"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert f"# Run:  {command}" in header
    assert any(command in page.read_text() for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    defaults = leaves(Config().to_dict())
    given = leaves(yaml.safe_load(path.read_text()))
    assert all(defaults[k] != v for k, v in given.items() if k not in ("data.train", "data.validation", "data.test"))
    monkeypatch.chdir(ROOT)  # as the README runs it
    cfg = load_config(path, [f"data.cache_dir={tmp_path}"])
    need(Path(cfg.data.train), f"the shared data of configs/{name}.yaml")
    splits = load_splits(cfg.data, problem_type=cfg.model.problem_type)
    assert len(splits.train) and len(splits.validation) and len(splits.test)
    assert ("text_pair" in splits.train.column_names) == (cfg.data.text_pair_column is not None)
