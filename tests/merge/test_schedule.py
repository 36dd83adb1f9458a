"""t resolution: mergekit's gradient and filter semantics, layer count from the model."""

import pytest
from hpcadapt_merge.schedule import PAPER_SLERP_T, layer_index, resolve_t


@pytest.mark.parametrize("layer, attn, mlp", [(0, 0, 1), (1, 0.064516, 0.935484), (8, 0.493548, 0.506452),
                                              (15, 0.312903, 0.687097), (24, 0.729032, 0.270968), (31, 1, 0)])
def test_paper_schedule_over_32_layers(layer, attn, mlp):
    attn_t = resolve_t(f"model.layers.{layer}.self_attn.o_proj.weight", PAPER_SLERP_T, 32)
    assert attn_t == pytest.approx(attn, abs=1e-6)
    assert resolve_t(f"model.layers.{layer}.mlp.down_proj.weight", PAPER_SLERP_T, 32) == pytest.approx(mlp, abs=1e-6)


def test_norms_and_tensors_outside_layers_take_the_default_or_position_zero():
    assert resolve_t("model.layers.3.input_layernorm.weight", PAPER_SLERP_T, 32) == 0.5
    assert resolve_t("model.embed_tokens.weight", [0.2, 0.9], 24) == 0.2  # outside the layers: position 0
    assert resolve_t("lm_head.weight", PAPER_SLERP_T, 24) == 0.5


def test_gradient_stretches_over_the_models_layer_count():
    # SmolLM has 24 layers: the last layer must reach the end of the gradient, not stop at 23/31.
    assert resolve_t("model.layers.23.self_attn.q_proj.weight", PAPER_SLERP_T, 24) == 1.0
    assert resolve_t("model.layers.23.self_attn.q_proj.weight", [0.0, 1.0], 24) == 1.0
    assert resolve_t("model.layers.12.mlp.up_proj.weight", [0.0, 1.0], 25) == pytest.approx(0.5)


def test_first_matching_filter_wins_and_a_leading_default_shadows_the_rest():
    spec = [{"filter": "mlp", "value": 0.1}, {"filter": "up_proj", "value": 0.9}, {"value": 0.4}]
    assert resolve_t("model.layers.0.mlp.up_proj.weight", spec, 4) == 0.1
    assert resolve_t("model.layers.0.self_attn.q_proj.weight", spec, 4) == 0.4
    assert resolve_t("model.layers.0.mlp.up_proj.weight", [{"value": 0.3}, {"filter": "mlp", "value": 0.9}], 4) == 0.3


def test_no_matching_entry_is_an_error_naming_the_tensor():
    with pytest.raises(ValueError, match="model.norm.weight"):
        resolve_t("model.norm.weight", [{"filter": "mlp", "value": 0.5}], 4)


def test_layer_index():
    assert layer_index("model.layers.17.mlp.gate_proj.weight") == 17
    assert layer_index("model.embed_tokens.weight") is None
    assert layer_index("model.norm.weight") is None
