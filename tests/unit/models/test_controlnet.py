"""ControlNet networks, ComfyUI's residual rules and how they reach diffmesh's UNet, on tiny SD1/SDXL files."""

import pytest
import torch

from diffmesh.errors import ModelError
from diffmesh.models import testmodels_controlnet as tcn
from diffmesh.models.controlnet import build_controlnet, layout_of, ref_for_file
from diffmesh.models.handle import ModelHandle
from diffmesh.models.load import build_component
from diffmesh.sampling.conds import prepare_conds
from diffmesh.sampling.control import AppliedControl, ControlRunner, broadcast_hint, merge
from diffmesh.sampling.model_sampling import ModelSampling

SKIPS = [(32, 8, 8), (32, 8, 8), (32, 4, 4), (64, 4, 4)]      # tiny SD1 UNet, 8x8 latent: conv_in, res, down, res


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("controlnets")
    return {layout: tcn.write(d / f"{layout}.safetensors", layout) for layout in ("cldm", "cldm_pth", "diffusers")} | {
        "second": tcn.write(d / "second.safetensors", "cldm", seed=77),
        "sdxl": tcn.write(d / "sdxl.safetensors", "cldm", family="sdxl")}


@pytest.fixture(scope="module")
def unet(tiny_models, store):
    return build_component(ModelHandle(tiny_models["sd1"], "unet", "sd1"), "cpu", "fp32", store)


def _inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((batch, 4, 8, 8), generator=g), torch.full((batch,), 3.0),
            torch.randn((batch, 77, 32), generator=g), torch.rand((1, 3, 64, 64), generator=g))


@pytest.mark.parametrize("layout", ["cldm", "cldm_pth", "diffusers"])
def test_each_layout_loads_and_gives_one_residual_per_input_block(files, store, layout):
    net = build_controlnet(ref_for_file(files[layout]), "cpu", None, store)
    x, sigma, context, hint = _inputs()
    out = net(x, torch.full((2,), 500.0), context, hint)
    assert [tuple(r.shape[1:]) for r in out["output"]] == SKIPS
    assert tuple(out["middle"][0].shape) == (2, 64, 4, 4)
    assert all(r.abs().sum() > 0 for r in out["output"])


def test_cldm_keys_land_on_the_matching_diffusers_modules(files, store):
    """A zero conv of input block i is diffusers' controlnet_down_blocks[i]; hint conv 14 is conv_out."""
    from safetensors.torch import load_file

    raw = load_file(files["cldm"])
    net = build_controlnet(ref_for_file(files["cldm"]), "cpu", None, store).net
    assert torch.equal(net.controlnet_down_blocks[3].weight, raw["zero_convs.3.0.weight"])
    assert torch.equal(net.controlnet_mid_block.weight, raw["middle_block_out.0.weight"])
    assert torch.equal(net.controlnet_cond_embedding.conv_out.weight, raw["input_hint_block.14.weight"])
    assert torch.equal(net.controlnet_cond_embedding.blocks[5].weight, raw["input_hint_block.12.weight"])


def test_sdxl_controlnet_reads_the_adm_embedding(files, store):
    from safetensors.torch import load_file

    net = build_controlnet(ref_for_file(files["sdxl"]), "cpu", None, store)
    assert torch.equal(net.net.add_embedding.linear_1.weight, load_file(files["sdxl"])["label_emb.0.0.weight"])
    x, _, _, hint = _inputs()
    extra = {"text_embeds": torch.randn(2, 64), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    out = net(x, torch.full((2,), 500.0), torch.randn(2, 77, 96), hint, **extra)
    other = net(x, torch.full((2,), 500.0), torch.randn(2, 77, 96), hint, **dict(extra, text_embeds=torch.zeros(2, 64)))
    assert [tuple(r.shape[1:]) for r in out["output"]] == SKIPS
    assert not torch.equal(out["middle"][0], other["middle"][0])     # y reaches the network


def test_residual_reaches_the_skip_connection_of_its_input_block(unet):
    """control["output"][0] belongs to input block 0 (conv_in): ComfyUI adds it to that skip, which the
    last output block concatenates after its hidden state; control["middle"] is added after the middle block."""
    x, _, context, _ = _inputs(1)
    t = torch.tensor([500.0])
    g = torch.Generator().manual_seed(9)
    r0, rm = torch.randn((1, *SKIPS[0]), generator=g), torch.randn((1, 64, 4, 4), generator=g)
    zeros = [torch.zeros((1, *s)) for s in SKIPS]
    got = unet(x, t, context, control={"output": [r0] + zeros[1:], "middle": [rm], "input": []})

    def add_to_skip(module, args, kwargs):
        h = args[0].clone()
        h[:, -SKIPS[0][0]:] += r0         # the concatenated skip is the last 32 channels
        return (h, *args[1:]), kwargs

    last = unet.unet.up_blocks[-1].resnets[-1]
    hooks = [last.register_forward_pre_hook(add_to_skip, with_kwargs=True),
             unet.unet.mid_block.register_forward_hook(lambda m, a, out: out + rm)]
    try:
        expected = unet(x, t, context)
    finally:
        for h in hooks:
            h.remove()
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, unet(x, t, context), atol=1e-3)


def test_merge_scales_pools_and_adds_the_previous_control():
    a = [torch.arange(8.0).reshape(1, 2, 2, 2)]
    prev = {"input": [], "middle": [torch.ones(1, 2, 2, 2)], "output": [torch.full((1, 2, 2, 2), 10.0), None]}
    out = merge({"output": a, "middle": [a[0] * 2]}, prev, 0.5, False)
    assert torch.equal(out["output"][0], a[0] * 0.5 + 10.0)
    assert out["output"][1] is None                     # a block only the previous control had stays as it was
    assert torch.equal(out["middle"][0], a[0] + 1.0)
    pooled = merge({"output": a}, None, 2.0, True)["output"][0]
    assert torch.equal(pooled[0, 0], torch.full((2, 2), 3.0)) and torch.equal(pooled[0, 1], torch.full((2, 2), 11.0))


def _runner(files, store, *names):
    nets = {ref_for_file(files[n]): build_controlnet(ref_for_file(files[n]), "cpu", None, store) for n in names}
    return ControlRunner(nets, ModelSampling()), {n: ref_for_file(files[n]) for n in names}


def test_chained_controlnets_give_the_sum_of_their_residuals(files, store):
    runner, refs = _runner(files, store, "cldm", "second")
    x, sigma, context, hint = _inputs()
    first = AppliedControl(refs["cldm"], hint, 0.7)
    second = AppliedControl(refs["second"], hint, 1.3, previous=first)
    alone = AppliedControl(refs["second"], hint, 1.3)
    chained = runner.control(second, x, sigma, context, {}, 2)
    a, b = runner.control(first, x, sigma, context, {}, 2), runner.control(alone, x, sigma, context, {}, 2)
    for key in ("output", "middle"):
        for got, ra, rb in zip(chained[key], a[key], b[key]):
            assert torch.allclose(got, ra + rb, atol=1e-6)


def test_a_control_outside_its_step_range_returns_the_previous_one(files, store):
    runner, refs = _runner(files, store, "cldm", "second")
    x, sigma, context, hint = _inputs()
    first = AppliedControl(refs["cldm"], hint, 1.0)
    late = AppliedControl(refs["second"], hint, 1.0, start_percent=0.5, end_percent=1.0, previous=first)
    ms = ModelSampling()
    high = torch.full((2,), ms.percent_to_sigma(0.2))      # early step: before start_percent
    assert runner.control(late, x, high, context, {}, 2) is not None
    expected = runner.control(first, x, high, context, {}, 2)
    got = runner.control(late, x, high, context, {}, 2)
    assert all(torch.equal(g, e) for g, e in zip(got["output"], expected["output"]))
    assert runner.control(AppliedControl(refs["cldm"], hint, 1.0, 1.0, 1.0), x, sigma, context, {}, 2) is None


def test_hint_is_center_cropped_then_scaled_nearest_exact_to_eight_times_the_latent(files, store):
    runner, refs = _runner(files, store, "cldm")
    hint = torch.rand((1, 3, 48, 80))
    x = torch.zeros((1, 4, 8, 8))
    got = runner._hint(AppliedControl(refs["cldm"], hint), x, 1, torch.float32)
    # aspect 80/48 > 1: 16 columns cut on each side, then 48x48 -> 64x64
    expected = torch.nn.functional.interpolate(hint[..., 16:64], size=(64, 64), mode="nearest-exact")
    assert torch.equal(got, expected)


def test_hint_rows_cycle_per_chunk_and_batch_slices_match_the_whole_batch():
    hint = torch.arange(2.0).reshape(2, 1, 1, 1)
    rows = broadcast_hint(hint, 6, 2)                 # 2 chunks of 3 rows: 0 1 0 | 0 1 0
    assert rows.flatten().tolist() == [0, 1, 0, 0, 1, 0]
    part = broadcast_hint(hint, 4, 2, batch_slice=(1, 3, 3))
    assert part.flatten().tolist() == [1, 0, 1, 0]
    assert broadcast_hint(hint[:1], 6, 2).shape[0] == 1      # one image broadcasts


def test_old_apply_shares_the_positive_control_with_the_negative_side():
    ms = ModelSampling()
    control = AppliedControl(None, torch.zeros(1, 3, 8, 8))
    pos = [[torch.zeros(1, 77, 32), {"control": control, "control_apply_to_uncond": True}]]
    neg = [[torch.ones(1, 77, 32), {}]]
    conds = prepare_conds({"positive": pos, "negative": neg}, None, (1, 4, 8, 8), ms)
    assert conds["negative"][0]["control"] is control and torch.equal(conds["negative"][0]["context"], neg[0][0])
    pos[0][1]["control_apply_to_uncond"] = False
    assert "control" not in prepare_conds({"positive": pos, "negative": neg}, None, (1, 4, 8, 8), ms)["negative"][0]


def test_unsupported_files_are_named_with_a_fix():
    with pytest.raises(ModelError, match="union ControlNets"):
        layout_of({"controlnet_cond_embedding.conv_in.weight", "control_add_embedding.linear_1.bias"})
    with pytest.raises(ModelError, match="not a ControlNet"):
        layout_of({"some.weight"})
    assert ref_for_file("/m/control_v11e_sd15_shuffle.safetensors").global_average_pooling
    assert not ref_for_file("/m/control_v11p_sd15_canny.safetensors").global_average_pooling


# ---------------------------------- T2I-adapters --------------------------------------------------

@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    return {"comfy": tcn.write_adapter(d / "t2i.safetensors"),
            "diffusers": tcn.write_adapter(d / "t2i-diffusers.safetensors", "diffusers"),
            "xl": tcn.write_adapter(d / "t2i-xl.safetensors", xl=True),
            "unet_rb2": tcn.write_sd1_two_resblocks(d / "sd1-rb2.safetensors")}


def test_adapter_layouts_give_the_same_features_at_comfyuis_block_positions(adapters, store):
    hint = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(2))
    comfy = build_controlnet(ref_for_file(adapters["comfy"]), "cpu", None, store)(hint)["input"]
    diffusers = build_controlnet(ref_for_file(adapters["diffusers"]), "cpu", None, store)(hint)["input"]
    # popped from the end, one per input block: levels 0-3 land after blocks 2, 5, 8, 11
    assert [i for i, f in enumerate(reversed(comfy)) if f is not None] == [2, 5, 8, 11]
    assert [tuple(comfy[-1 - b].shape[1:]) for b in (2, 5)] == [(32, 8, 8), (64, 4, 4)]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(comfy, diffusers))


def test_sdxl_adapter_feeds_blocks_3_5_8_and_the_middle(adapters, store):
    out = build_controlnet(ref_for_file(adapters["xl"]), "cpu", None, store)(torch.rand((1, 3, 128, 128)))
    assert [i for i, f in enumerate(reversed(out["input"])) if f is not None] == [3, 5, 8]
    assert len(out["middle"]) == 1 and tuple(out["middle"][0].shape) == (1, 128, 4, 4)


def test_adapter_pools_odd_sizes_after_padding_like_comfyui():
    from diffmesh.models.t2i_adapter import _PadPool

    got = _PadPool()(torch.ones((1, 1, 3, 3)))
    assert torch.equal(got, torch.tensor([[[[0.25, 0.5], [0.5, 1.0]]]]))


def test_adapter_residual_is_added_after_the_last_block_of_its_level(adapters, store):
    """ComfyUI adds input[b] to h after input block b, before it becomes a skip: for blocks 2 and 5 of an
    SD1 UNet with two res blocks per level that is the output of each level's last attention block."""
    unet = build_component(ModelHandle(adapters["unet_rb2"], "unet", "sd1"), "cpu", "fp32", store)
    x, _, context, _ = _inputs(1)
    t = torch.tensor([500.0])
    g = torch.Generator().manual_seed(4)
    r2, r5 = torch.randn((1, 32, 8, 8), generator=g), torch.randn((1, 64, 4, 4), generator=g)
    inputs = [None] * 12
    inputs[-1 - 2], inputs[-1 - 5] = r2, r5
    got = unet(x, t, context, control={"input": inputs, "middle": [], "output": []})

    def adder(r):
        return lambda m, a, out: (out[0] + r,) + tuple(out[1:])

    hooks = [unet.unet.down_blocks[0].attentions[-1].register_forward_hook(adder(r2)),
             unet.unet.down_blocks[1].attentions[-1].register_forward_hook(adder(r5))]
    try:
        expected = unet(x, t, context)
    finally:
        for h in hooks:
            h.remove()
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, unet(x, t, context), atol=1e-3)


def test_adapter_residual_for_a_block_diffusers_cannot_reach_is_refused(unet):
    inputs = [None] * 12
    inputs[-1 - 2] = torch.zeros((1, 32, 4, 4))       # block 2 of the one-res-block UNet is a downsampler
    x, _, context, _ = _inputs(1)
    with pytest.raises(NotImplementedError, match="input block 2"):
        unet(x, torch.tensor([500.0]), context, control={"input": inputs, "middle": [], "output": []})
