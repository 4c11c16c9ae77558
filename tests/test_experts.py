"""Vision experts, parametrized over the expert registry: every registered expert must pass
every test here (a newly registered expert without entries in the tables below fails loudly)."""

import itertools
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import config_dict, distinct_width_vision_config, make_pixel_values

import eagle_hf
from eagle_hf import EagleVisionTower, vision_preset
from eagle_hf.modeling.registry import get_expert, register_expert

EXPERTS = eagle_hf.list_experts()
# The five experts of the released checkpoints, with reference numbers below; the generic experts
# (siglip, dinov2, timm, ...) have their own file, tests/test_generic_experts.py.
RELEASED = ["clip", "convnext", "eva", "pix2struct", "sam"]

# Parameter counts of the released experts (shared/reference/eagle-original.md §1.4 / §2.2).
# ConvNeXt's 846,471,016 include the classifier head, which eagle-hf does not build.
CONVNEXT_XXL_HEAD = 3072 * 2 + 3072 * 1000 + 1000
FULL_SIZE_PARAMS = {
    "clip": 303_507_456,  # incl. post_layernorm
    "convnext": 846_471_016 - CONVNEXT_XXL_HEAD,
    "sam": 307_687_936,
    "eva": 303_388_608,
    "pix2struct": 512_812_032,
}
# Full-size native output: (channels, side of the square map) for the shared 1024 px input (§1.4).
FULL_SIZE_OUTPUT = {"clip": (1024, 24), "convnext": (3072, 32), "sam": (1024, 32), "pix2struct": (1536, 45),
                    "eva": (1024, 64)}
FULL_SIZE_INPUT = {"clip": 336, "convnext": 1024, "sam": 1024, "pix2struct": 1024, "eva": 1024}


def tiny_native_side(name: str, cfg) -> int:
    """Side of the tiny expert's native feature map, from its own config (not from the code under test)."""
    if name == "clip":
        return cfg.input_size // cfg.patch_size
    if name == "convnext":
        return cfg.input_size // (cfg.patch_size * 2 ** (len(cfg.dims) - 1))
    if name == "sam":
        return cfg.image_size // cfg.patch_size // cfg.pixel_unshuffle
    if name == "pix2struct":
        # largest square patch grid with rows*cols <= max_patches
        side = int(cfg.max_patches**0.5)
        return side
    if name == "eva":
        return cfg.input_size // cfg.patch_size
    raise AssertionError(f"add the expected native grid of new expert {name!r} to this test")


def unused_parameters(name: str, cfg) -> set[str]:
    """Parameters an expert documents as unused by its forward pass for this config."""
    unused = set()
    if name == "clip":
        if not cfg.use_post_layernorm:
            unused |= {"post_layernorm.weight", "post_layernorm.bias"}
        if cfg.drop_cls_before_encoder:
            unused.add("embeddings.class_embedding")
    return unused


def tiny_expert(name: str, seed: int = 0, **overrides):
    spec = get_expert(name)
    cfg = spec.config_class(**{**get_expert(name).preset("tiny"), **overrides})
    torch.manual_seed(seed)
    return spec.model_class(cfg).eval()


def expert_input(expert, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, expert.input_size, expert.input_size, generator=g)
    if expert.input_space == "pixels_255":
        x = (x * 0.25 + 0.5).clamp(0, 1) * 255
    return x


def test_registry_lists_the_five_released_experts():
    assert set(EXPERTS) >= set(RELEASED)
    assert EXPERTS == sorted(EXPERTS)
    for name in EXPERTS:  # every expert ships both presets
        assert get_expert(name).tiny and get_expert(name).full_size, name


@pytest.mark.parametrize("name", RELEASED)
def test_expert_alone_output_grid_and_channels(name):
    expert = tiny_expert(name)
    assert expert.expert_name == name
    cfg = expert.config
    x = expert_input(expert, batch=2)
    with torch.no_grad():
        y = expert(x)
        y_single = expert(x[1:])
    side = tiny_native_side(name, cfg)
    assert tuple(y.shape) == (2, cfg.out_channels, side, side)
    assert expert.out_channels == cfg.out_channels
    assert torch.isfinite(y).all()
    # A freshly initialised expert must not be degenerate (e.g. SAM's 1e-10 default init).
    assert y.std() > 1e-2
    # Samples do not leak into each other.
    torch.testing.assert_close(y[1:], y_single, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y[0], y[1])


@pytest.mark.parametrize("name", RELEASED)
def test_expert_block_in_mixture(name):
    """Inside a mixture, the expert's block of the fused map sits at its channel offset, has its
    channel count and grid**2 tokens, and equals the expert run alone on EAGLE's resized input
    (bilinear, align_corners=True; Pix2Struct gets de-normalised 0..255 pixels)."""
    cfg = distinct_width_vision_config()
    torch.manual_seed(0)
    tower = EagleVisionTower(cfg).eval()
    pixel_values = make_pixel_values(cfg, 2)
    with torch.no_grad():
        out = tower(pixel_values, output_expert_features=True)
    grid, offset, channels = cfg.grid_size, cfg.channel_offsets[name], cfg.expert_channels[name]
    assert channels == cfg.expert_config(name).out_channels
    fused = out.last_hidden_state
    assert tuple(fused.shape) == (2, grid**2, cfg.hidden_size)
    block = fused[..., offset:offset + channels]
    assert tuple(out.expert_features[name].shape) == (2, grid**2, channels)
    assert torch.equal(block, out.expert_features[name])

    expert = getattr(tower, name)
    x = pixel_values
    if expert.input_space == "pixels_255":
        mean = torch.tensor(cfg.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(cfg.image_std).view(1, 3, 1, 1)
        x = (x * std + mean) * 255
    if expert.input_size != cfg.image_size:
        x = F.interpolate(x, size=(expert.input_size,) * 2, mode="bilinear", align_corners=True)
    with torch.no_grad():
        native = expert(x)
    assert native.shape[1] == channels
    if native.shape[-1] != grid:
        native = F.interpolate(native, size=(grid, grid), mode="bilinear", align_corners=True)
    torch.testing.assert_close(block, native.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)

    # The same expert as the only member of a mixture.
    solo_cfg = vision_preset("tiny", experts=[name])
    torch.manual_seed(0)
    solo = EagleVisionTower(solo_cfg).eval()
    with torch.no_grad():
        solo_out = solo(make_pixel_values(solo_cfg, 1)).last_hidden_state
    assert tuple(solo_out.shape) == (1, solo_cfg.grid_size**2, solo_cfg.expert_channels[name])
    assert solo_cfg.channel_offsets == {name: 0}


@pytest.fixture(scope="module")
def fused_backward():
    """One backward pass from the fused map of the full tiny mixture; returns the tower."""
    cfg = vision_preset("tiny")
    torch.manual_seed(0)
    tower = EagleVisionTower(cfg).train()
    fused = tower(make_pixel_values(cfg, 2)).last_hidden_state
    weights = torch.randn(fused.shape, generator=torch.Generator().manual_seed(1))
    (fused * weights).sum().backward()
    return tower


@pytest.mark.parametrize("name", RELEASED)
def test_backward_from_fused_output_reaches_every_expert_parameter(name, fused_backward):
    expert = getattr(fused_backward, name)
    unused = unused_parameters(name, expert.config)
    params = dict(expert.named_parameters())
    assert unused <= set(params), f"stale names in the unused list: {unused - set(params)}"
    no_grad = [k for k, p in params.items() if k not in unused and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not no_grad, f"{name}: no gradient reaches {no_grad}"
    for k in unused:
        assert params[k].grad is None or not params[k].grad.any(), f"{name}.{k} is documented unused but got a gradient"


def test_clip_post_layernorm_and_cls_are_used_when_configured():
    """The CLIP parameters that EAGLE leaves unused do get gradients in the LLaVA-style setting."""
    expert = tiny_expert("clip", use_post_layernorm=True, drop_cls_before_encoder=False, feature_layer=-2).train()
    assert unused_parameters("clip", expert.config) == set()
    y = expert(expert_input(expert, 1))
    assert y.shape[-1] == expert.config.input_size // expert.config.patch_size  # CLS removed after the encoder
    y.square().mean().backward()
    for key in ("post_layernorm.weight", "embeddings.class_embedding"):
        assert expert.get_parameter(key).grad.abs().sum() > 0
    # feature_layer=-2 with 2 layers: the last layer is skipped entirely
    assert expert.encoder.layers[-1].mlp.fc2.weight.grad is None


@pytest.mark.parametrize("name", EXPERTS)
def test_expert_save_load_round_trip(name, tmp_path):
    expert = tiny_expert(name, seed=3)
    x = expert_input(expert, batch=2, seed=5)
    with torch.no_grad():
        before = expert(x)
    expert.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "config.json" in files
    assert any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files), files
    reloaded = type(expert).from_pretrained(tmp_path).eval()
    assert type(reloaded.config) is type(expert.config)
    assert config_dict(reloaded.config) == config_dict(expert.config)
    for key, tensor in expert.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[key]), key
    with torch.no_grad():
        after = reloaded(x)
    assert torch.equal(before, after)


@pytest.mark.parametrize("name", RELEASED)
def test_full_size_expert_on_meta_device(name):
    spec = get_expert(name)
    cfg = spec.config_class(**get_expert(name).preset("full_size"))
    with torch.device("meta"):
        expert = spec.model_class(cfg)
    assert all(p.device.type == "meta" for p in expert.parameters())
    assert all(b.device.type == "meta" for b in expert.buffers())
    assert sum(p.numel() for p in expert.parameters()) == FULL_SIZE_PARAMS[name]
    channels, side = FULL_SIZE_OUTPUT[name]
    assert expert.out_channels == channels
    assert expert.input_size == FULL_SIZE_INPUT[name]
    if name == "pix2struct":
        # transformers' Pix2Struct encoder calls .item(), which meta tensors cannot do;
        # check the patch grid the expert chooses for the shared 1024 px input instead.
        assert cfg.patch_grid(1024, 1024) == (side, side)
    else:
        with torch.device("meta"):
            y = expert(torch.empty(1, 3, expert.input_size, expert.input_size))
        assert tuple(y.shape) == (1, channels, side, side)


@pytest.mark.parametrize("name", EXPERTS)
def test_tiny_and_full_size_configs_share_the_architecture(name):
    """Tiny and full-size configs differ in sizes only: same config class, same module types."""
    spec = get_expert(name)
    tiny = spec.config_class(**get_expert(name).preset("tiny"))
    full = spec.config_class(**get_expert(name).preset("full_size"))
    assert type(tiny) is type(full) is spec.config_class
    with torch.device("meta"):
        tiny_types = {type(m).__name__ for m in spec.model_class(tiny).modules()}
        full_types = {type(m).__name__ for m in spec.model_class(full).modules()}
    assert tiny_types == full_types


def test_unknown_expert_lists_known_experts():
    with pytest.raises(ValueError, match="unknown vision expert 'nope'") as err:
        get_expert("nope")
    for name in EXPERTS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="known experts: " + ", ".join(EXPERTS)):
        vision_preset("tiny", experts=["clip", "nope"])


def test_register_expert_refuses_a_second_class_under_a_taken_name():
    spec = get_expert("clip")

    class Other(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_expert("clip", spec.config_class)(Other)
    assert get_expert("clip").model_class is spec.model_class


# --- SAM's attention path ------------------------------------------------------------------

@pytest.mark.parametrize("window_size", [0, 3, 4], ids=["global", "window", "window-padded"])
@pytest.mark.parametrize("reference_impl", ["eager", "sdpa"])
def test_sam_layer_matches_transformers_sam_layer(window_size, reference_impl):
    """eagle-hf's SAM layer (bias built once, qkv/proj outside the window partition) against
    transformers' own `SamVisionLayer` with the same weights, on a 6 x 6 token grid (windows of 3
    tile it, windows of 4 pad it to 8 x 8), non-zero relative-position tables, forward and backward."""
    from transformers.models.sam.modeling_sam import SamVisionLayer

    from eagle_hf.modeling.expert_sam import EagleSamExpertConfig, EagleSamVisionLayer

    cfg = EagleSamExpertConfig(**{**get_expert("sam").preset("tiny"), "image_size": 48})
    cfg._attn_implementation = reference_impl
    torch.manual_seed(0)
    reference = SamVisionLayer(cfg, window_size=window_size).double()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.3)
    cfg_ours = EagleSamExpertConfig(**{**get_expert("sam").preset("tiny"), "image_size": 48})
    cfg_ours._attn_implementation = "sdpa"
    ours = EagleSamVisionLayer(cfg_ours, window_size=window_size).double()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 6, 6, cfg.hidden_size, dtype=torch.float64)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    # float32 softmax in the eager reference: ~1e-7 relative noise, amplified in the gradients
    # (e.g. the key bias, whose true gradient is 0, gets up to 3e-5 there)
    tol, grad_tol = (1e-12, 1e-11) if reference_impl == "sdpa" else (2e-6, 1e-4)
    expected, got = reference(x_ref), ours(x_ours)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    expected.pow(2).sum().backward()
    got.pow(2).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=grad_tol, atol=grad_tol)
    for (name, p_ref), p_ours in zip(reference.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=grad_tol, atol=grad_tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("window_size", [4, 3], ids=["windows-tile", "windows-padded"])
def test_sam_expert_fp32_matches_the_library_encoder_path(window_size):
    """The whole tiny SAM expert in float32 (SDPA, fast path, with its scratch buffers: no
    autograd) against the same weights run through transformers' eager SAM layers (decomposed bias
    added to materialised scores), with windows that tile the 8 x 8 grid and ones that pad it."""
    fast = tiny_expert("sam", window_size=window_size)
    spec = get_expert("sam")
    cfg = spec.config_class(**dict(get_expert("sam").preset("tiny"), window_size=window_size))
    cfg._attn_implementation = "eager"
    eager = spec.model_class(cfg).eval()
    eager.load_state_dict(fast.state_dict())
    with torch.no_grad():
        for layer in list(fast.layers):
            layer.attn.rel_pos_h.normal_(0, 0.5)
            layer.attn.rel_pos_w.normal_(0, 0.5)
        eager.load_state_dict(fast.state_dict())
        x = expert_input(fast, batch=2)
        assert eager.layers[0].attn.config._attn_implementation == "eager"  # transformers' path
        torch.testing.assert_close(fast(x), eager(x), rtol=1e-5, atol=1e-5)


def _sam_with_two_global_layers():
    expert = tiny_expert("sam", num_hidden_layers=4, global_attn_indexes=[1, 3])
    with torch.no_grad():
        for layer in expert.layers:
            layer.attn.rel_pos_h.normal_(0, 0.5)
            layer.attn.rel_pos_w.normal_(0, 0.5)
    return expert


def test_sam_bias_scratch_shares_one_buffer_per_shape_and_changes_no_value(monkeypatch):
    """Without autograd both global layers write their bias into one buffer, both windowed layers
    into another and every layer's MLP activation into a third, and the output is bit-identical to
    the one with fresh tensors (transformers' MLP); under autograd the scratch hands out none; after
    the forward the buffers are gone."""
    from eagle_hf.modeling.expert_sam import BiasScratch

    expert = _sam_with_two_global_layers()
    x = expert_input(expert, batch=2)
    handed = []
    get = BiasScratch.get
    monkeypatch.setattr(BiasScratch, "get", lambda self, shape, like: handed.append(get(self, shape, like)) or handed[-1])
    expert(x)
    asked = len(handed)
    assert asked and all(t is None for t in handed)  # autograd on: no sharing
    handed.clear()
    with torch.no_grad():
        shared = expert(x)
    assert len(handed) == asked and all(t is not None for t in handed)
    # One buffer per shape, whichever layers ask for it, and distinct shapes never share one.
    by_shape = {}
    for t in handed:
        by_shape.setdefault(tuple(t.shape), set()).add(t.data_ptr())
    assert all(len(ptrs) == 1 for ptrs in by_shape.values())
    assert len(set().union(*by_shape.values())) == len(by_shape)
    heads, side, window = expert.config.num_attention_heads, x.shape[-1] // expert.config.patch_size, 4
    cfg = expert.config
    assert {(2, heads, side, side, side, side),  # the global layers' bias
            (2 * (side // window) ** 2, heads, window, window, window, window),  # the windowed ones'
            (2, side, side, 3 * cfg.hidden_size),  # qkv
            (2, side // window, side // window, window, window, 3 * cfg.hidden_size),  # its windows
            (2, side, side, cfg.mlp_dim)} <= set(by_shape)  # the MLP's activation
    assert expert.bias_scratch._local.buffers is None
    monkeypatch.setattr(BiasScratch, "get", lambda self, shape, like: None)  # a fresh buffer per layer
    with torch.no_grad():
        fresh = expert(x)
    assert torch.equal(shared, fresh)


def test_sam_bias_scratch_is_per_thread_and_per_copy():
    """Two threads running one model at once, and a deep copy or a pickled copy of it, each get
    their own buffers. The copies' outputs equal the original's exactly; the threads' equal the
    sequential ones to float32 rounding (an op run from a second Python thread may split its
    reduction differently), far below what another image's bias in the buffer would change."""
    import copy
    import pickle
    import threading

    expert = _sam_with_two_global_layers()
    inputs = [expert_input(expert, batch=1, seed=s) for s in range(2)]
    with torch.no_grad():
        expected = [expert(x) for x in inputs]
        results, barrier = [None, None], threading.Barrier(2)

        def run(i):
            barrier.wait()
            for _ in range(3):
                results[i] = expert(inputs[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (expected[0] - expected[1]).abs().max() > 0.1
        for got, want in zip(results, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for clone in (copy.deepcopy(expert), pickle.loads(pickle.dumps(expert))):
            scratch = clone.bias_scratch
            assert scratch is not expert.bias_scratch
            assert all(layer.attn.scratch is scratch for layer in clone.layers)
            assert torch.equal(clone(inputs[0]), expected[0])


@pytest.mark.parametrize("hidden", [45, 2730 // 16, 48])
def test_eva_swiglu_padded_matmuls_are_the_plain_function(hidden):
    """On the CPU, EVA's SwiGLU computes w1 and w2 zero-padded to an aligned width (2730 -> 2736 at
    full size) and slices them back: the output and every gradient equal the plain
    ``w3(ln(silu(w1 x) * w2 x))`` in float64, and the parameters keep the checkpoint's shapes."""
    from eagle_hf.modeling.expert_eva import ALIGNED_WIDTH, EagleEvaExpertConfig, EagleEvaSwiGLU

    torch.manual_seed(0)
    mlp = EagleEvaSwiGLU(EagleEvaExpertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=hidden))
    mlp = mlp.double()
    with torch.no_grad():  # a non-trivial norm: a norm over padded columns would show
        mlp.ffn_ln.weight.normal_()
        mlp.ffn_ln.bias.normal_()
    x = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 5, 32, dtype=torch.float64)
    got = mlp(x)
    expected = mlp.w3(mlp.ffn_ln(F.silu(mlp.w1(x)) * mlp.w2(x)))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    params = [x, *mlp.parameters()]
    for a, b in zip(torch.autograd.grad((got * weights).sum(), params),
                    torch.autograd.grad((expected * weights).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert mlp.w1.weight.shape == (hidden, 32) and mlp.w3.weight.shape == (32, hidden)
    assert (hidden % ALIGNED_WIDTH == 0) == (hidden == 48)


def test_pix2struct_runs_the_releases_gelu_new_as_the_fused_tanh_gelu():
    """The released `dense_act_fn="gelu_new"` runs as torch's fused tanh-GELU: the same function,
    so the expert's output matches the one with transformers' composed `NewGELUActivation`."""
    from transformers.activations import GELUTanh, NewGELUActivation

    expert = tiny_expert("pix2struct", dense_act_fn="gelu_new")
    acts = [m for m in expert.modules() if hasattr(m, "act") and isinstance(m.act, torch.nn.Module)]
    assert len(acts) == expert.config.num_hidden_layers and all(type(m.act) is GELUTanh for m in acts)
    x = expert_input(expert, batch=2)
    with torch.no_grad():
        fused = expert(x)
        for m in acts:
            m.act = NewGELUActivation()
        composed = expert(x)
    torch.testing.assert_close(fused, composed, rtol=1e-5, atol=1e-5)
    assert not torch.equal(fused, torch.zeros_like(fused))


# --------------------------------------------------------------------------------------------------
# Pix2Struct's in-model patching (what the original's per-forward processor round trip did)


def _pix2struct_expert(**overrides):
    spec = get_expert("pix2struct")
    return spec.model_class(spec.config_class(**dict(spec.preset("tiny"), **overrides))).eval()


@pytest.mark.parametrize("shape,overrides", [((2, 3, 64, 64), {}), ((1, 3, 64, 48), {"max_patches": 30}),
                                             ((1, 3, 200, 200), {"patch_size": 16, "patch_embed_hidden_size": 768,
                                                                 "max_patches": 120, "input_size": 200}),
                                             # already rows x cols patches: neither axis is resampled
                                             ((1, 3, 48, 64), {"max_patches": 48}),
                                             # a patch size that does not divide the 32-column bands
                                             ((1, 3, 100, 90), {"patch_size": 12, "patch_embed_hidden_size": 432,
                                                                "max_patches": 40, "input_size": 100})],
                         ids=["square", "max-patches", "full-size-patch", "no-resize", "patch-12"])
def test_pix2struct_patches_match_transformers_image_processor(shape, overrides):
    """Same flattened patches as transformers' own Pix2Struct processor on the same float pixels (within
    the re-implementation bound of the parity README; it sums the statistics in float32)."""
    from transformers.models.pix2struct.image_processing_pil_pix2struct import Pix2StructImageProcessorPil

    expert = _pix2struct_expert(**overrides)
    cfg = expert.config
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(3)) * 255
    patches, mask, (rows, cols) = expert.make_patches(x)
    proc = Pix2StructImageProcessorPil(is_vqa=False, max_patches=cfg.max_patches,
                                       patch_size={"height": cfg.patch_size, "width": cfg.patch_size})
    ref = proc(images=list(x.numpy()), return_tensors="pt", input_data_format="channels_first")
    assert patches.shape == ref["flattened_patches"].shape
    assert torch.equal(mask, ref["attention_mask"].to(mask.dtype))
    assert rows * cols == int(mask[0].sum())
    assert (patches - ref["flattened_patches"]).abs().max() < 1e-5


@pytest.mark.parametrize("shape,size", [((1, 3, 1024, 1024), (720, 720)), ((2, 3, 64, 48), (80, 32)),
                                        ((1, 3, 33, 70), (16, 112)), ((1, 3, 40, 50), (40, 20))],
                         ids=["release-1024-to-720", "up-and-down", "odd", "one-axis"])
def test_banded_antialiased_resize_equals_torch_interpolate(shape, size):
    """The banded-matmul resize is torch's antialiased bilinear, up to float32 summation order (values of
    0..255: 1e-4 is a few ulps), and its bands cover every input pixel that torch reads."""
    from eagle_hf.modeling.expert_pix2struct import _resampling_bands, resize_antialiased

    x = torch.rand(*shape, generator=torch.Generator().manual_seed(5)) * 255
    expected = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    got = resize_antialiased(x, *size)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4
    for (size_in, size_out), rows in itertools.product(zip(shape[2:], size), (1, 16, 32, 45)):
        bands = _resampling_bands(size_in, size_out, torch.device("cpu"), rows)
        assert [b[0] for b in bands][0] == 0 and bands[-1][1] == size_out
        assert all(prev[1] == nxt[0] for prev, nxt in zip(bands, bands[1:]))
        for _, _, _, _, weights in bands:  # rows of resampling weights sum to one
            torch.testing.assert_close(weights.sum(1), torch.ones(weights.shape[0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["uniform", "offset_tiny_spread", "constant", "rows_mixed"])
def test_pix2struct_row_moments_are_the_float64_ones(kind):
    """The chunked one-pass moments are float64 mean / population variance of each row, up to float32
    reduction error: the mean within 1e-6 of the row's standard deviation and the variance within 1e-6
    relative, so that neither moves a standardised patch value by more than ~1e-6 (its bound is 1e-5).
    A constant row is exact (its shifted values are zeros)."""
    g = torch.Generator().manual_seed(0)
    if kind == "uniform":
        x = torch.rand(3, 300 * 301, generator=g) * 255  # length not a multiple of the chunk
    elif kind == "offset_tiny_spread":  # where an unshifted sum of squares would cancel
        x = 200 + torch.rand(3, 256 * 256, generator=g) * 1e-3
    elif kind == "constant":
        x = torch.full((3, 64 * 64), 17.0)
    else:
        x = torch.stack([torch.rand(128 * 128, generator=g) * 255, torch.rand(128 * 128, generator=g) * 3])
    expert = _pix2struct_expert()
    mean, var = expert._row_moments(x, chunk=4096)
    assert mean.dtype == var.dtype == torch.float64
    ref_var, ref_mean = torch.var_mean(x.double(), 1, correction=0)
    if kind == "constant":
        assert torch.equal(mean, ref_mean) and torch.equal(var, torch.zeros(3, dtype=torch.float64))
        return
    assert ((mean - ref_mean).abs() <= 1e-6 * ref_var.sqrt()).all()
    torch.testing.assert_close(var, ref_var, rtol=1e-6, atol=0)


def test_pix2struct_folds_the_pixel_affine_into_its_standardisation():
    """``make_patches(x, (scale, offset))`` is ``make_patches(x * scale + offset)``: the image
    statistics over all channels (channels with different offsets, so the per-channel moments must be
    combined with the spread of the channel means) and every patch value."""
    expert = _pix2struct_expert(max_patches=30)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 48, generator=g)
    scale, offset = torch.tensor([68.5, 66.6, 70.3]), torch.tensor([122.8, 116.7, 104.1])
    folded, mask, grid = expert.make_patches(x, (scale, offset))
    pixels = x * scale.view(1, 3, 1, 1) + offset.view(1, 3, 1, 1)
    plain, plain_mask, plain_grid = expert.make_patches(pixels)
    assert grid == plain_grid and torch.equal(mask, plain_mask)
    assert (folded - plain).abs().max() < 1e-5
    # Known values, independently: the first patch of image 0 is its top-left p x p block, in (row,
    # column, channel) order, standardised with the image's float64 mean and std.
    p = expert.config.patch_size
    ref = pixels[0].double()
    rows, cols = grid
    resized = F.interpolate(pixels[:1], size=(rows * p, cols * p), mode="bilinear", antialias=True)[0].double()
    expected = ((resized[:, :p, :p] - ref.mean()) / ref.std(correction=0)).permute(1, 2, 0).reshape(-1)
    assert (folded[0, 0, 2:].double() - expected).abs().max() < 1e-5


@pytest.mark.parametrize("case", ["float32", "bfloat16", "grey"])
def test_mixture_folds_the_pixel_affine_only_in_float32_colour(case):
    """In float32 the tower gives Pix2Struct the normalised input itself and the affine to 0..255
    pixels (``x * 255 std + 255 mean``); in bf16 (where the original rounds the de-normalised image to
    bf16) and for a grey expert it gives the de-normalised pixels, and no affine."""
    cfg = vision_preset("tiny", ["clip", "pix2struct"])
    if case == "grey":
        cfg.grayscale_experts = ["pix2struct"]
    tower = EagleVisionTower(cfg).eval()
    pixel_values = make_pixel_values(cfg, 2)
    if case == "bfloat16":
        tower, pixel_values = tower.to(torch.bfloat16), pixel_values.to(torch.bfloat16)
    x, extra = tower.expert_calls(pixel_values)["pix2struct"]
    mean = torch.tensor(cfg.image_mean, dtype=torch.float64)
    std = torch.tensor(cfg.image_std, dtype=torch.float64)
    if case == "float32":
        assert x is pixel_values  # the shared input, not a copy (the tiny pix2struct reads 64 px, as the mixture)
        scale, offset = extra["pixel_affine"]
        torch.testing.assert_close(scale, std.float().double() * 255, rtol=0, atol=0)
        torch.testing.assert_close(offset, mean.float().double() * 255, rtol=0, atol=0)
    else:
        assert extra == {}
        assert torch.equal(x, tower.expert_inputs(pixel_values)["pix2struct"])
        if case == "bfloat16":
            expected = (pixel_values * std.to(torch.bfloat16).view(1, 3, 1, 1) + mean.to(torch.bfloat16).view(1, 3, 1, 1)) * 255
            assert torch.equal(x, expected)
