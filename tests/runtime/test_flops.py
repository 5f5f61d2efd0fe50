import pytest

from mpee_runtime.core.flops import FLOPS_PER_MAC, FlopsModel


def test_layer_flops_by_hand():
    fm = FlopsModel(hidden=4, ffn=6, num_labels=3, num_layers=2)
    # a = f = 5: 4*16*5 + 2*4*25 + 2*4*6*5 = 320 + 200 + 240 = 760 MACs
    assert fm.layer_flops(5, 5) == 2 * 760
    # a pruning layer: attention on 5 tokens, FFN on 3: 320 + 200 + 144 = 664 MACs
    assert fm.layer_flops(5, 3) == 2 * 664
    assert fm.exit_flops() == FLOPS_PER_MAC * (16 + 12)


def test_full_and_speedups():
    fm = FlopsModel(hidden=4, ffn=6, num_labels=3, num_layers=2)
    full = 2 * fm.layer_flops(5, 5) + fm.exit_flops()
    assert fm.full_flops(5) == full
    # exiting after layer 1 costs one layer and one head
    one_layer = fm.executed_flops([5], [5])
    assert one_layer == fm.layer_flops(5, 5) + fm.exit_flops()
    rho, rho128 = fm.speedups(5, one_layer)
    assert rho == full / one_layer
    assert rho128 == fm.full_flops(128) / one_layer
    # running everything with two exit heads is slightly more than the one-head full model
    assert fm.speedups(5, fm.executed_flops([5, 5], [5, 5]))[0] < 1


def test_dataset_speedups_is_a_ratio_of_sums():
    fm = FlopsModel(hidden=4, ffn=6, num_labels=3, num_layers=2)
    short, long = fm.executed_flops([5], [5]), fm.executed_flops([9, 9], [9, 9])
    rho, rho128 = fm.dataset_speedups([5, 9], [short, long])
    assert rho == (fm.full_flops(5) + fm.full_flops(9)) / (short + long)
    assert rho != (fm.full_flops(5) / short + fm.full_flops(9) / long) / 2   # not a mean of ratios
    assert rho128 == 2 * fm.full_flops(128) / (short + long)
    with pytest.raises(ValueError):
        fm.dataset_speedups([5], [])
