"""A model's footprint from its shape: parameter counts without weights, checkpoint sizes, and generation
batches sized by memory (pure functions of numbers)."""

from __future__ import annotations

import pytest

from pspo_repro.models import footprint
from pspo_repro.models.footprint import KNOWN, Shape, generation_batch

Q15 = KNOWN["Qwen/Qwen2.5-1.5B"]
# what training holds on the GPU besides validation: float32 weights, gradients and Adam's two moments
TRAINING_STATE = 16 * Q15.parameters


def test_a_generate_call_is_sized_by_memory():
    """80 GB, the 1.5B model with its training state, prompts of ~200 tokens and 128 new ones: hundreds of
    sequences per call, not 64; a card with almost nothing free still generates, one sequence at a time."""
    free = 80e9 - TRAINING_STATE
    batch = generation_batch(Q15, 200, 128, free)
    assert batch >= 256
    assert batch & (batch - 1) == 0  # a power of two: a little more or less free memory gives the same batch
    per_sequence = footprint.sequence_bytes(Q15, 200, 128)
    assert batch * per_sequence <= 0.5 * free < 2 * batch * per_sequence  # the largest that fits half
    assert batch == 512  # 33.5 MB per sequence: cache 9.4, sampler 4.9, one layer's prompt activations 19.3
    assert generation_batch(Q15, 200, 128, 1e6) == 1
    assert generation_batch(Q15, 200, 128, 0) == 1
    assert generation_batch(Q15, 200, 1024, free) < batch  # longer completions, fewer at once
    assert generation_batch(Q15, 200, 128, free, activation_bytes=4) < batch  # float32 without autocast
    with pytest.raises(ValueError, match=r"share must be in \(0, 1\], got 1.5"):
        generation_batch(Q15, 200, 128, free, share=1.5)


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("Qwen/Qwen2.5-0.5B", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, heads=14)),
        ("Qwen/Qwen2.5-1.5B", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, heads=12)),
        (
            "Qwen/Qwen2-Math-1.5B",
            dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, heads=12),
        ),
    ],
)
def test_the_table_of_the_papers_models_is_their_configs(name, config):
    """The known shapes are what their hub configs give, parameters counted on the meta device (no weights)."""
    from transformers import Qwen2Config

    heads = config.pop("heads")
    hub = Qwen2Config(
        vocab_size=151_936,
        num_attention_heads=heads,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        **config,
    )
    assert Shape.from_config(hub) == KNOWN[name]


def test_shapes_are_read_without_weights(tmp_path):
    from transformers import Qwen2Config

    folder = tmp_path / "model"
    folder.mkdir()
    Qwen2Config(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    ).save_pretrained(folder)  # a config and no weights
    shape, source = footprint.shape_of(str(folder))
    assert source == "config" and (shape.layers, shape.hidden, shape.kv_dim, shape.vocab) == (2, 64, 64, 100)
    assert shape.parameters == 2 * 100 * 64 + 2 * (4 * 64 * 64 + 3 * 64 + 3 * 64 * 128 + 2 * 64) + 64
    tiny, source = footprint.shape_of("tiny-test")  # from its recipe; nothing is built
    assert source == "config" and tiny.layers == 2 and tiny.parameters > 0
    assert footprint.shape_of("nobody/not-a-model") == (None, "unknown")


def test_checkpoint_sizes():
    assert footprint.weights_bytes(Q15.parameters) == 4 * 1_543_714_304
    assert footprint.trainer_checkpoint_bytes(Q15.parameters) == 12 * 1_543_714_304  # weights + 2 moments
    assert footprint.trainer_checkpoint_bytes(Q15.parameters, "sgd") == 4 * 1_543_714_304
