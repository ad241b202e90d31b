"""lib.tools.sinks: attention masses are a partition of the prompt's attention; value changes are exact on planted caches."""
import numpy as np
import pytest
import torch

from lib.kv import cache as kv
from lib.kv.encode import encode
from lib.tools import sinks
from tiny import arch_of, build


@pytest.mark.parametrize("kind", ["llama", "gemma3", "qwen2"])
def test_attention_mass_partitions_the_prompts_attention_tiny(kind):
    m = build(kind, attn="eager")
    ids = [1] + list(range(10, 30)) + [40, 41, 42]
    a = sinks.attention_mass(m, ids, 1, 20)
    assert a.shape == (arch_of(m).n_layers, 4)
    assert np.allclose(a[:, 0] + a[:, 1] + 19 * a[:, 2] + a[:, 3], 1.0, atol=1e-5)
    assert (a >= 0).all()
    with pytest.raises(ValueError, match="at least 2 document tokens"):
        sinks.attention_mass(m, ids, 1, 1)
    with pytest.raises(ValueError, match="no prompt"):
        sinks.attention_mass(m, ids[:21], 1, 20)


def test_value_change_is_exact_on_a_planted_change():
    m = build("llama")
    arch = arch_of(m)
    bare = encode(m, arch, list(range(10, 30)))
    vs = []
    for v in bare.values:
        w = v.clone()
        w[:, :, 1] *= 3.0  # the first document entry's values tripled: |dv| / |v| = 2 exactly
        vs.append(w)
    planted = kv.DocCache(bare.keys, tuple(vs), bare.positions)
    r = sinks.value_change(bare, planted, 1)
    assert np.allclose(r[:, 0], 2.0, atol=1e-5) and np.allclose(r[:, 1], 0.0)
    assert np.allclose(sinks.value_change(bare, bare, 1), 0.0)


@pytest.mark.slow
def test_profile_on_the_bundled_model(smollm2):
    """Real model: layer-0 values never depend on the prefix (value change 0 there, an exact oracle), the
    masses partition the prompt's attention, and primed values do move at deeper layers."""
    from lib.data import synthetic_qa
    from lib.kv.models import load_model
    from lib.studies import contamination

    lm = load_model("smollm2-135m-instruct", attn_implementation="eager")
    out = sinks.profile(lm, synthetic_qa(2, 5), contamination.prefix_ids(lm.tokenizer, "static_fact"))
    L = out["layers"]
    assert out["n_samples"] == 2 and len(L) == lm.arch.n_layers
    assert L[0]["value_change_first_doc"] < 1e-5 and L[0]["value_change_other_doc"] < 1e-5
    assert max(x["value_change_other_doc"] for x in L) > 1e-2
    for x in L:
        assert 0 <= x["anchor"] <= 1 and 0 <= x["first_doc"] <= 1 and 0 <= x["prompt"] <= 1
