import pytest

from scratchlm.config import load_run_config, parse_overrides, run_config_from_dict
from scratchlm.errors import ScratchLMError
from scratchlm.models.gpt import GPTConfig
from scratchlm.models.llama import LlamaConfig


def test_required_keys_exist():
    cfg = run_config_from_dict({})
    for key in ["family", "n_layer", "n_head", "n_kv_head", "d_model", "block_size"]:
        assert hasattr(cfg.model, key)
    for key in ["max_steps", "batch_size", "grad_accum", "lr", "warmup_steps", "eval_every",
                "save_every", "seed"]:
        assert hasattr(cfg.train, key)


def test_family_picks_dataclass_and_preset():
    cfg = run_config_from_dict({"model": {"family": "gpt", "preset": "gpt2-124m", "n_layer": 2}})
    assert isinstance(cfg.model, GPTConfig)
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.block_size) == (2, 768, 1024)
    cfg = run_config_from_dict({"model": {"family": "llama", "n_kv_head": 2}})
    assert isinstance(cfg.model, LlamaConfig) and cfg.model.kv_heads == 2


def test_dotted_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  n_layer: 3\ntrain:\n  lr: 0.01\n")
    cfg = load_run_config(p, overrides=["--model.n_layer", "6", "--train.lr=3e-4",
                                        "--model.n_kv_head", "none", "--train.compile", "true"])
    assert cfg.model.n_layer == 6 and cfg.train.lr == 3e-4
    assert cfg.model.n_kv_head is None and cfg.train.compile is True


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"model": {"n_layers": 2}}, "model.n_layers; did you mean model.n_layer"),
        ({"train": {"learning_rate": 1}}, "train.learning_rate"),
        ({"trian": {}}, "did you mean train"),
        ({"model": {"n_layer": "six"}}, "model.n_layer must be an integer"),
        ({"train": {"lr": "fast"}}, "train.lr must be a number"),
        ({"model": {"family": "gtp"}}, "did you mean 'gpt'"),
        ({"model": {"preset": "tinyy"}}, "did you mean 'tiny'"),
        ({"model": {"d_model": 100, "n_head": 3}}, "divisible"),
        ({"model": {"family": "gpt", "n_kv_head": 2}}, "n_kv_head must equal"),
    ],
)
def test_config_errors_name_the_key(data, needle):
    with pytest.raises(ScratchLMError, match=None) as e:
        run_config_from_dict(data)
    assert needle in str(e.value)


def test_override_syntax_errors():
    with pytest.raises(ScratchLMError, match="--section.key"):
        parse_overrides(["n_layer", "3"])
    with pytest.raises(ScratchLMError, match="needs a value"):
        parse_overrides(["--model.n_layer"])
    with pytest.raises(ScratchLMError, match="did you mean --model.n_layer"):
        parse_overrides(["--modle.n_layer", "3"])


def test_configs_dir_recipes_load():
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml")):
        load_run_config(path)
