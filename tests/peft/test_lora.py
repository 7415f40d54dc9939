"""LoRA by module swap: exactness at init, merge/unmerge, gradients only in adapters, and
adapters that `peft` reads and writes (parity with transformers + peft on the same weights)."""

import json
import math

import pytest
import torch
from torch import nn

from scratchlm.errors import ScratchLMError
from scratchlm.peft import (
    LoRALinear,
    apply_lora,
    count_parameters,
    load_adapter,
    lora_layers,
    mark_only_lora_trainable,
    merge_lora,
    resolve_targets,
    save_adapter,
    unload_lora,
    unmerge_lora,
)
from tests.conftest import FAMILIES, tiny_model

TARGETS = {"gpt": ["c_attn", "c_fc"], "llama": ["q_proj", "v_proj", "down_proj"]}


def _randomize(model, seed=1):
    """Non-zero B (a fresh adapter is the identity), so the tests below can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)


def _x(vocab=97, shape=(2, 13)):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_adapter_gives_exactly_the_base_logits(family):
    model = tiny_model(family).eval()
    x = _x()
    with torch.no_grad():
        before = model(x)
        names = apply_lora(model, r=4, alpha=8, dropout=0.1, targets="all-linear")
        after = model(x)
    assert names and all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert torch.equal(before, after)


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_unmerge_and_merged_equals_adapter(family):
    model = tiny_model(family).eval()
    x = _x()
    apply_lora(model, r=4, alpha=8, targets=TARGETS[family])
    _randomize(model)
    weights = {n: m.weight.detach().clone() for n, m in lora_layers(model).items()}
    with torch.no_grad():
        base_out = tiny_model(family).eval()(x)
        adapted = model(x)
        assert (adapted - base_out).abs().max() > 1e-3  # the adapter does something
        merge_lora(model)
        merged = model(x)
        assert all(not torch.equal(m.weight, weights[n]) for n, m in lora_layers(model).items())
        assert (merged - adapted).abs().max().item() < 1e-5
        unmerge_lora(model)
        for n, m in lora_layers(model).items():
            torch.testing.assert_close(m.weight, weights[n], rtol=0, atol=1e-6)
        assert (model(x) - adapted).abs().max().item() < 1e-5
        unload_lora(model, merge=True)
        assert not lora_layers(model)
        assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
        assert (model(x) - adapted).abs().max().item() < 1e-5
        # the state dict is the plain model's again
        assert set(model.state_dict()) == set(tiny_model(family).state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_only_adapter_parameters_get_gradients(family):
    model = tiny_model(family)
    apply_lora(model, r=4, alpha=8, targets="all-linear")
    mark_only_lora_trainable(model)
    _randomize(model)  # with B = 0, A's gradient is zero; make both non-trivial
    x = _x()
    model(x).float().logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        is_lora = name.endswith(("lora_A", "lora_B"))
        assert p.requires_grad == is_lora, name
        if is_lora:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    trainable, total = count_parameters(model)
    expected = sum(m.lora_A.numel() + m.lora_B.numel() for m in lora_layers(model).values())
    assert trainable == expected and total > trainable


def test_targets_and_scaling():
    model = tiny_model("llama")
    everything = resolve_targets(model, "all-linear")
    assert "lm_head" not in everything and len(everything) == 2 * 7  # 2 layers x 7 linears
    assert resolve_targets(model, "q_proj,v_proj") == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    with pytest.raises(ScratchLMError, match=r"'qproj' matches no linear layer.*q_proj"):
        resolve_targets(model, "qproj")
    with pytest.raises(ScratchLMError, match="output layer"):
        resolve_targets(model, ["lm_head"])
    apply_lora(model, r=16, alpha=8, targets="q_proj", rslora=True)
    layer = next(iter(lora_layers(model).values()))
    assert layer.scaling == pytest.approx(8 / math.sqrt(16))
    with pytest.raises(ScratchLMError, match="already has LoRA"):
        apply_lora(model, r=4, alpha=8)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_round_trip_and_wrong_base(family, tmp_path):
    model = tiny_model(family).eval()
    apply_lora(model, r=4, alpha=8, targets=TARGETS[family])
    _randomize(model)
    save_adapter(tmp_path / "a", model, base_model="somewhere")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == sorted(TARGETS[family])
    assert cfg["fan_in_fan_out"] == (family == "gpt")
    fresh = tiny_model(family).eval()
    load_adapter(fresh, tmp_path / "a")
    x = _x()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    bigger = tiny_model(family, d_model=128).eval()
    with pytest.raises(ScratchLMError, match="different base model"):
        load_adapter(bigger, tmp_path / "a")
    other = "llama" if family == "gpt" else "gpt"
    with pytest.raises(ScratchLMError, match="does not fit this model"):
        load_adapter(tiny_model(other), tmp_path / "a")
