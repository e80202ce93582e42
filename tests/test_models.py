"""SimFormer network: shapes, backbone variants and weights, inference helper, and a short overfitting run."""

import torch

torch.set_num_threads(2)

import pytest
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from models import (SimFormer, SimFormerCriterion, SimNet, build_backbone, fold_batchnorm, load_backbone_state,
                    residual_adds_in_place, semantic_probs)
from models.backbone import BACKBONES
from models.transformer import DecoderLayer, PositionEmbeddingSine


def tiny(num_classes=5, dec_layers=2, **kw):
    return SimFormer(num_classes, backbone="resnet18", backbone_norm=kw.pop("backbone_norm", "bn"), num_queries=10,
                     hidden_dim=64, mask_dim=64, dec_layers=dec_layers, nheads=4, dim_feedforward=128, **kw)


@pytest.mark.parametrize("dec_layers", [2, 3])
def test_output_shapes(dec_layers):
    torch.manual_seed(0)
    out = tiny(dec_layers=dec_layers)(torch.randn(2, 3, 64, 96))
    assert out["pred_logits"].shape == (2, 10, 6)
    assert out["pred_masks"].shape == (2, 10, 16, 24)
    assert out["pixel_features"].shape == (2, 64, 16, 24)
    assert len(out["aux_outputs"]) == dec_layers - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 10, 6) and aux["pred_masks"].shape == (2, 10, 16, 24)
        assert not torch.equal(aux["pred_logits"], out["pred_logits"])


def test_inference_computes_the_last_layer_alone():
    """Eval mode skips the other layers' masks (deep supervision is for training): the same last-layer output."""
    torch.manual_seed(0)
    model = tiny(dec_layers=3, backbone_norm="frozen_bn", dropout=0.0)
    x = torch.randn(2, 3, 64, 96)
    trained = model(x)
    model.eval()
    inferred = model(x)
    assert inferred["aux_outputs"] == [] and len(trained["aux_outputs"]) == 2
    for key in ("pred_logits", "pred_masks", "pixel_features"):
        torch.testing.assert_close(inferred[key], trained[key])


def test_decoder_can_attend_to_res4_for_small_images():
    """res4 doubles the token grid per side; the decoder sees different memory, outputs keep their shapes."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 96)
    model = tiny(transformer_in="res4")
    assert model.input_proj.in_channels == model.backbone.channels["res4"]
    out = model(x)
    assert out["pred_logits"].shape == (1, 10, 6) and out["pred_masks"].shape == (1, 10, 16, 24)
    with pytest.raises(KeyError):
        tiny(transformer_in="res9")


def test_masked_attention_sees_only_inside_the_previous_mask():
    """A decoder layer's cross-attention ignores memory where memory_mask is set; the masked decoder supervises the
    prediction made before its first layer, which depends on no image."""
    torch.manual_seed(0)
    layer = DecoderLayer(16, 2, 32, 0.0).eval()
    tgt, query_pos = torch.randn(1, 3, 16), torch.randn(1, 3, 16)
    memory, pos = torch.randn(1, 8, 16), torch.randn(1, 8, 16)
    blocked = torch.zeros(1, 3, 8, dtype=torch.bool)
    blocked[:, :, 4:] = True  # every query sees only the first 4 memory tokens
    changed = memory.clone()
    changed[:, 4:] += 5.0
    out = layer(tgt, memory, pos, query_pos, blocked.repeat_interleave(2, 0))
    torch.testing.assert_close(layer(tgt, changed, pos, query_pos, blocked.repeat_interleave(2, 0)), out)
    assert not torch.allclose(layer(tgt, changed, pos, query_pos), layer(tgt, memory, pos, query_pos))

    model = tiny(dec_layers=2, masked_attention=True)
    out = model(torch.randn(2, 3, 64, 96))
    assert len(out["aux_outputs"]) == 2 and out["pred_masks"].shape == (2, 10, 16, 24)
    first = out["aux_outputs"][0]["pred_logits"]
    torch.testing.assert_close(first[0], first[1])  # learnt query features alone: the same for every image
    assert not torch.allclose(out["pred_logits"][0], out["pred_logits"][1])


@pytest.mark.parametrize("norm, layer",
                         [("frozen_bn", FrozenBatchNorm2d), ("bn", nn.BatchNorm2d), ("gn", nn.GroupNorm)])
def test_backbone_norms(norm, layer):
    backbone = build_backbone("resnet18", norm)
    assert isinstance(backbone.get_submodule("bn1"), layer)
    assert isinstance(build_backbone("mobilenet_v2", norm).get_submodule("features.0.1"), layer)


# Every supported family: res2..res5 widths (ImageNet trunks as torchvision defines them).
CHANNELS = {
    "resnet18": (64, 128, 256, 512), "resnet34": (64, 128, 256, 512), "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048), "mobilenet_v2": (24, 32, 96, 1280),
    "mobilenet_v3_large": (24, 40, 112, 960), "efficientnet_b0": (24, 40, 112, 1280),
    "convnext_tiny": (96, 192, 384, 768), "regnet_y_400mf": (48, 104, 208, 440),
}


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_backbone_strides_and_channels(name):
    assert set(CHANNELS) == set(BACKBONES)
    backbone = build_backbone(name, "bn")
    feats = backbone(torch.randn(1, 3, 64, 128))
    assert list(feats) == ["res2", "res3", "res4", "res5"]
    for i, level in enumerate(feats):
        stride = 4 * 2 ** i
        assert feats[level].shape == (1, CHANNELS[name][i], 64 // stride, 128 // stride)
    assert backbone.channels == dict(zip(feats, CHANNELS[name]))


# Residual blocks per family: each one's addition runs in place, but ConvNeXt's, whose branch ends in a layer-scale
# product.
RESIDUAL_BLOCKS = {"resnet18": 8, "resnet34": 16, "resnet50": 16, "resnet101": 33, "mobilenet_v2": 10,
                   "mobilenet_v3_large": 10, "efficientnet_b0": 9, "convnext_tiny": 0, "regnet_y_400mf": 16}


# resnet18 folds pairs of the traced graph, mobilenet_v2 pairs inside modules the trace keeps whole; every family:
# with the slow tests (18 s).
@pytest.mark.parametrize("name", [n if n in ("resnet18", "mobilenet_v2") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(CHANNELS)])
@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_folded_batchnorm_gives_the_same_features(name, norm):
    """Inference folds every BatchNorm of every family into its convolution and adds residuals in place: no
    BatchNorm is left, the features are those of the unfolded trunk (with statistics far from the identity, as
    trained ones are), and the input is left as it was."""
    torch.manual_seed(0)
    backbone = build_backbone(name, norm)
    norms = [m for m in backbone.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    with torch.no_grad():
        for m in norms:
            for buf, lo, hi in ((m.running_mean, -1, 1), (m.running_var, 0.5, 2), (m.weight, 0.5, 1.5),
                                (m.bias, -0.5, 0.5)):
                buf.copy_(torch.empty_like(buf).uniform_(lo, hi))
    backbone.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        before = backbone(x)
        assert fold_batchnorm(backbone) == len(norms)
        given = x.clone()
        after = backbone(x)
    torch.testing.assert_close(x, given, rtol=0, atol=0)
    assert sum(node.target == "add_" for node in backbone.graph.nodes) == RESIDUAL_BLOCKS[name]
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in backbone.modules())
    for level in before:
        torch.testing.assert_close(after[level], before[level], rtol=1e-4, atol=1e-4 * before[level].abs().max())
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_backbone(name, norm))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_in_place_residuals_train_as_the_plain_trace(name, norm):
    """The trunk adds its residuals in place in training too: features and every gradient are those of
    torchvision's trace left as it is (autograd would refuse an in-place write that a backward reads)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    from models.backbone import LEVELS, _norm_layer

    torch.manual_seed(0)
    ours = build_backbone(name, norm).train()
    spec = BACKBONES[name]
    plain = create_feature_extractor(spec.build(weights=None, norm_layer=_norm_layer(norm, 1e-5)),
                                     dict(zip(spec.nodes, LEVELS)), tracer_kwargs={"leaf_modules": [FrozenBatchNorm2d]})
    plain.load_state_dict(ours.state_dict())
    plain.train()
    assert residual_adds_in_place(ours) == 0 and not any(node.target == "add_" for node in plain.graph.nodes)
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for trunk in (ours, plain):
        inp = x.clone().requires_grad_(True)
        feats = trunk(inp)
        sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum() for f in feats.values()).backward()
        grads.append([inp.grad, *(p.grad for p in trunk.parameters())])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_frozen_batchnorm_keeps_autocast_activations_in_low_precision():
    """Under bf16 autocast the pretrained presets' frozen BatchNorm computes in bf16, as detectron2's does, rather
    than promoting every activation to float32 (more memory and time); the features stay those of float32 to bf16
    rounding."""
    torch.manual_seed(0)
    trunk = build_backbone("resnet18", "frozen_bn").train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = trunk(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = trunk(x)
    for level in full:
        assert low[level].dtype == torch.bfloat16
        torch.testing.assert_close(low[level].float(), full[level], rtol=0, atol=0.03 * full[level].abs().max())


def test_backbone_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="norm"):
        build_backbone("resnet18", "ln")


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_load_backbone_state(tmp_path, norm):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    for m in ref.modules():  # non-trivial statistics, so a silently skipped buffer would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    backbone = build_backbone("resnet18", norm)
    load_backbone_state(backbone, torch.load(tmp_path / "r18.pth", weights_only=True))
    assert torch.equal(backbone.get_submodule("layer3.1.conv2").weight, ref.layer3[1].conv2.weight)
    assert torch.equal(backbone.get_submodule("layer2.0.bn1").running_var, ref.layer2[0].bn1.running_var)
    ref.eval()
    backbone.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
        torch.testing.assert_close(backbone(x)["res5"], expected)


def test_load_backbone_state_mismatch():
    r34 = torchvision.models.resnet34(weights=None).state_dict()
    with pytest.raises(ValueError, match=r"unexpected \(\d+\): layer1\.2"):
        load_backbone_state(build_backbone("resnet18"), r34)
    r18 = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(ValueError, match="missing"):
        load_backbone_state(build_backbone("resnet18"), {k: v for k, v in r18.items() if "layer4" not in k})
    with pytest.raises(ValueError, match="shape mismatch"):
        load_backbone_state(build_backbone("resnet18"), {**r18, "conv1.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(ValueError, match="unexpected"):  # GroupNorm has no running statistics
        load_backbone_state(build_backbone("resnet18", "gn"), r18)


def test_position_encoding():
    pos = PositionEmbeddingSine(8)(torch.zeros(2, 16, 3, 5))
    assert pos.shape == (2, 16, 3, 5)
    # first y feature is sin(2*pi*y/H), with y = 1..H; x features start at channel 8
    torch.testing.assert_close(pos[0, 0, :, 0], torch.sin(torch.arange(1, 4) / 3 * 2 * torch.pi))
    torch.testing.assert_close(pos[0, 9, 0, :], torch.cos(torch.arange(1, 6) / 5 * 2 * torch.pi))
    assert torch.equal(pos[0, :8, :, 0], pos[0, :8, :, 4])  # y part constant along x


def test_semantic_probs_matches_definition():
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 4, 4), torch.randn(2, 4, 3, 3)
    probs = semantic_probs(logits, masks, (6, 6))
    assert probs.shape == (2, 3, 6, 6)
    cls = logits.softmax(-1)
    low = sum(cls[:, q, :3, None, None] * masks[:, q, None].sigmoid() for q in range(4))
    expected = torch.nn.functional.interpolate(low, size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(probs, expected)
    # masks that cover everything: each pixel's class scores add up to the queries' object probability
    full = semantic_probs(logits, torch.full((2, 4, 3, 3), 50.0), (3, 3))
    torch.testing.assert_close(full.sum(1), (1 - cls[..., -1]).sum(1)[:, None, None].expand(2, 3, 3))


def test_inference_deterministic_in_eval():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_masks"], b["pred_masks"])
    model.train()
    assert not torch.equal(model(x)["pred_logits"], a["pred_logits"])  # dropout is live in train mode


def test_simnet_grid_equals_pairs():
    torch.manual_seed(0)
    net = SimNet(8, width=16)
    a, b, c = torch.randn(3, 8), torch.randn(4, 8), torch.randn(2, 8)
    fa = torch.cat([a.repeat_interleave(4, 0), c.repeat_interleave(3, 0)])
    fb = torch.cat([b.repeat(3, 1), a.repeat(2, 1)])
    torch.testing.assert_close(net.grid_logits([(a, b), (c, a)]), net.logits(fa, fb))
    p = net(fa, fb)
    assert p.shape == (18,) and ((p > 0) & (p < 1)).all()
    assert sum(isinstance(m, nn.Linear) for m in net.modules()) == 6 + 1 + 1  # 6 FCs, first shortcut, head


def _synthetic_batch():
    """Two 64x64 images: base classes 0 and 1 plus a novel class 2 (tag only), each a distinct colour."""
    colours = torch.tensor([[1.5, -1.0, -1.0], [-1.0, 1.5, -1.0], [-1.0, -1.0, 1.5]])
    full = torch.zeros(2, 64, 64, dtype=torch.long)
    full[0, :, 32:] = 1
    full[0, 40:, :24] = 2
    full[1, :32] = 1
    full[1, 40:, 40:] = 2
    images = colours[full].permute(0, 3, 1, 2) + 0.1 * torch.randn(2, 3, 64, 64)
    targets = []
    for b in range(2):
        sem = torch.where(full[b] == 2, 255, full[b])
        targets.append({"labels": torch.tensor([0, 1, 2]),
                        "masks": torch.stack([sem == 0, sem == 1, torch.zeros_like(sem, dtype=torch.bool)]),
                        "has_mask": torch.tensor([True, True, False]), "sem": sem,
                        "pad": torch.zeros(64, 64, dtype=torch.bool), "ref": 1 - b, "novel_tags": torch.tensor([2])})
    return images, targets, full


STEPS = 20


@pytest.mark.parametrize("masked_attention", [pytest.param(False, marks=pytest.mark.slow), True])
def test_overfit_two_images_and_eval_mode(masked_attention, seed=0):
    torch.manual_seed(seed)
    model = SimFormer(3, backbone="resnet18", backbone_norm="bn", num_queries=6, hidden_dim=32, mask_dim=32,
                      dec_layers=2, nheads=2, dim_feedforward=64, dropout=0.0, masked_attention=masked_attention)
    criterion = SimFormerCriterion(3, [0, 1], [2], mask_dim=32, num_sim_points=20, sim_class_points=15,
                                   num_dist_points=20)
    images, targets, full = _synthetic_batch()
    opt = torch.optim.AdamW([*model.parameters(), *criterion.parameters()], lr=1e-3, weight_decay=1e-4)
    history = []
    for _ in range(STEPS):
        loss = criterion(model(images), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0], history
    model.eval()  # running BatchNorm statistics must serve inference as well as batch statistics did in training
    with torch.no_grad():
        out = model(images)
    pred = semantic_probs(out["pred_logits"], out["pred_masks"], (64, 64)).argmax(1)
    base = full != 2
    assert (pred[base] == full[base]).float().mean() > 0.9
