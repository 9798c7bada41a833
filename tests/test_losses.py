"""detectron2 training losses: hand-computed matching, sampling, RPN, box and mask losses, and gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pycontrast_det.config import get_cfg
from pycontrast_det.errors import ConfigError, DatasetError
from pycontrast_det.modeling.losses import (
    SampledRois,
    _Matcher,
    fast_rcnn_losses,
    mask_rcnn_loss,
    rpn_losses,
    sample_proposals,
)

# pycocotools' decode trips numpy 2's copy-keyword deprecation inside pycocotools itself
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def softplus(x: float) -> float:
    """log(1 + e^x): BCE-with-logits of logit x against target 0 (and of -x against target 1)."""
    return math.log1p(math.exp(x))


@pytest.fixture
def cfg():
    return get_cfg()


def _box(x0, y0, x1, y1):
    return torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32)


# ---------------------------------------------------------------- matcher


def test_matcher_bands_and_low_quality():
    # one gt; predictions with IoU 0.2 (negative), 0.5 (ignored band), 0.8 (positive)
    quality = torch.tensor([[0.2, 0.5, 0.8], [0.1, 0.1, 0.0]])
    matches, labels = _Matcher([0.3, 0.7], [0, -1, 1], False, "MODEL.RPN")(quality)
    assert labels.tolist() == [0, -1, 1]
    assert matches.tolist() == [0, 0, 0]
    # gt 1's best prediction (IoU 0.1, tied at 0 and 1) becomes positive with low-quality matching,
    # but keeps its own argmax match (gt 0), as detectron2 does
    matches, labels = _Matcher([0.3, 0.7], [0, -1, 1], True, "MODEL.RPN")(quality)
    assert labels.tolist() == [1, 1, 1]
    assert matches.tolist() == [0, 0, 0]


def test_matcher_without_gt_labels_everything_with_first_band():
    matches, labels = _Matcher([0.5], [0, 1], False, "MODEL.ROI_HEADS")(torch.zeros(0, 4))
    assert labels.tolist() == [0, 0, 0, 0] and matches.tolist() == [0, 0, 0, 0]


def test_matcher_rejects_inconsistent_config():
    with pytest.raises(ConfigError, match="MODEL.RPN.IOU_LABELS"):
        _Matcher([0.3, 0.7], [0, 1], True, "MODEL.RPN")
    with pytest.raises(ConfigError, match="ascending"):
        _Matcher([0.7, 0.3], [0, -1, 1], True, "MODEL.RPN")


# ---------------------------------------------------------------- RPN


def test_rpn_anchor_identical_to_gt_gives_target_one_and_zero_box_loss(cfg):
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    logits = torch.tensor([[1.5, -0.5]])
    deltas = torch.zeros(1, 2, 4)
    out = rpn_losses(anchors, logits, deltas, [_box(0, 0, 10, 10)], [(128, 128)], cfg)
    # anchor 0 positive (target 1), anchor 1 negative (target 0); normaliser 256 * 1 image
    expected_cls = (softplus(-1.5) + softplus(-0.5)) / 256
    assert out["loss_rpn_cls"].item() == pytest.approx(expected_cls, rel=1e-6)
    assert out["loss_rpn_loc"].item() == 0.0


def test_rpn_low_quality_match_keeps_best_anchor_below_threshold(cfg):
    # gt [0,0,10,10] vs anchor [0,0,20,10]: IoU 0.5 < 0.7, but it is the gt's best anchor -> positive
    anchors = torch.tensor([[0.0, 0.0, 20.0, 10.0], [200.0, 200.0, 210.0, 210.0]])
    logits = torch.tensor([[2.0, -1.0]])
    deltas = torch.zeros(1, 2, 4)
    out = rpn_losses(anchors, logits, deltas, [_box(0, 0, 10, 10)], [(256, 256)], cfg)
    assert out["loss_rpn_cls"].item() == pytest.approx((softplus(-2.0) + softplus(-1.0)) / 256, rel=1e-6)
    # target deltas: dx = (5 - 10) / 20, dy = 0, dw = log(10 / 20), dh = 0; L1 against zero deltas
    assert out["loss_rpn_loc"].item() == pytest.approx((0.25 + math.log(2.0)) / 256, rel=1e-6)


def test_rpn_zero_gt_image_is_all_background_and_normalises_by_images(cfg):
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0], [50.0, 50.0, 60.0, 60.0]])
    logits = torch.tensor([[0.3, -0.2, 1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    deltas = torch.full((2, 3, 4), 0.1, requires_grad=True)
    gt = [torch.zeros(0, 4), _box(0, 0, 10, 10)]
    out = rpn_losses(anchors, logits, deltas, gt, [(64, 64), (64, 64)], cfg)
    # image 0: three negatives; image 1: anchor 0 positive, 1 (IoU 25/300) and 2 negative; logits 0 -> log 2
    expected = (softplus(0.3) + softplus(-0.2) + softplus(1.0) + 3 * math.log(2.0)) / (256 * 2)
    assert out["loss_rpn_cls"].item() == pytest.approx(expected, rel=1e-6)
    assert out["loss_rpn_loc"].item() == pytest.approx(4 * 0.1 / (256 * 2), rel=1e-6)  # the one positive
    (out["loss_rpn_cls"] + out["loss_rpn_loc"]).backward()
    assert logits.grad.abs().min() > 0  # every anchor was sampled
    assert deltas.grad[1, 0].abs().sum() > 0 and deltas.grad[0].abs().sum() == 0  # only the positive regresses


def test_rpn_sampling_caps_positives_at_half_of_256(cfg):
    # 300 anchors identical to the gt (positives) and 700 far away (negatives)
    anchors = torch.cat([_box(0, 0, 16, 16).repeat(300, 1), _box(500, 500, 516, 516).repeat(700, 1)])
    logits = torch.zeros(1, 1000)
    deltas = torch.ones(1, 1000, 4)  # every positive costs |1 - 0| * 4 = 4
    out = rpn_losses(anchors, logits, deltas, [_box(0, 0, 16, 16)], [(600, 600)], cfg)
    assert out["loss_rpn_cls"].item() == pytest.approx(math.log(2.0), rel=1e-6)  # 256 sampled of log 2 each
    assert out["loss_rpn_loc"].item() == pytest.approx(128 * 4 / 256, rel=1e-6)  # 128 positives


def test_rpn_sampling_fills_with_negatives_when_positives_are_few(cfg):
    anchors = torch.cat([_box(0, 0, 16, 16).repeat(10, 1), _box(500, 500, 516, 516).repeat(990, 1)])
    logits = torch.cat([torch.full((10,), 3.0), torch.full((990,), -2.0)])[None]
    deltas = torch.ones(1, 1000, 4)
    out = rpn_losses(anchors, logits, deltas, [_box(0, 0, 16, 16)], [(600, 600)], cfg)
    assert out["loss_rpn_cls"].item() == pytest.approx((10 * softplus(-3.0) + 246 * softplus(-2.0)) / 256,
                                                       rel=1e-5)
    assert out["loss_rpn_loc"].item() == pytest.approx(10 * 4 / 256, rel=1e-6)


def test_rpn_boundary_thresh_ignores_anchors_outside_the_image(cfg):
    cfg.MODEL.RPN.BOUNDARY_THRESH = 0
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 70.0], [-5.0, 40.0, 5.0, 50.0]])
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    out = rpn_losses(anchors, logits, torch.zeros(1, 3, 4), [_box(0, 0, 10, 10)], [(64, 64)], cfg)
    # anchor 1 crosses the right/bottom edge (70 >= 64), anchor 2 the left edge: both ignored
    assert out["loss_rpn_cls"].item() == pytest.approx(softplus(-1.0) / 256, rel=1e-6)


def test_rpn_loss_weights_beta_and_giou(cfg):
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[[0.5, 0.0, 0.0, 0.0]]])  # decoded box shifted by 5 px
    gt = [_box(0, 0, 10, 10)]
    cfg.MODEL.RPN.LOSS_WEIGHT = 2.0
    cfg.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 3.0
    out = rpn_losses(anchors, torch.zeros(1, 1), deltas, gt, [(32, 32)], cfg)
    assert out["loss_rpn_cls"].item() == pytest.approx(2.0 * math.log(2.0) / 256, rel=1e-6)
    assert out["loss_rpn_loc"].item() == pytest.approx(6.0 * 0.5 / 256, rel=1e-6)
    cfg.MODEL.RPN.LOSS_WEIGHT = cfg.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
    cfg.MODEL.RPN.SMOOTH_L1_BETA = 1.0
    out = rpn_losses(anchors, torch.zeros(1, 1), deltas, gt, [(32, 32)], cfg)
    assert out["loss_rpn_loc"].item() == pytest.approx(0.5 * 0.5**2 / 256, rel=1e-6)
    cfg.MODEL.RPN.BBOX_REG_LOSS_TYPE = "giou"
    out = rpn_losses(anchors, torch.zeros(1, 1), deltas, gt, [(32, 32)], cfg)
    # [5,0,15,10] vs [0,0,10,10]: IoU 50/150, enclosing 150 = union, so GIoU loss = 1 - 1/3
    assert out["loss_rpn_loc"].item() == pytest.approx((2.0 / 3.0) / 256, rel=1e-5)
    cfg.MODEL.RPN.BBOX_REG_LOSS_TYPE = "l2"
    with pytest.raises(ConfigError, match="MODEL.RPN.BBOX_REG_LOSS_TYPE"):
        rpn_losses(anchors, torch.zeros(1, 1), deltas, gt, [(32, 32)], cfg)


def test_rpn_losses_are_float32_for_half_precision_predictions(cfg):
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    logits = torch.tensor([[1.0, -1.0]], dtype=torch.bfloat16)
    deltas = torch.full((1, 2, 4), 0.25, dtype=torch.bfloat16)
    out = rpn_losses(anchors, logits, deltas, [_box(0, 0, 10, 10)], [(64, 64)], cfg)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert out["loss_rpn_loc"].item() == pytest.approx(1.0 / 256, rel=1e-6)


# ---------------------------------------------------------------- proposal sampling


def _target(boxes, classes):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "classes": torch.tensor(classes, dtype=torch.int64)}


def test_sample_proposals_appends_gt_and_labels_background_as_num_classes(cfg):
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 9.0], [50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 20.0, 10.0]])]
    target = _target([[0, 0, 10, 10], [30, 30, 40, 40]], [7, 2])
    (s,) = sample_proposals(proposals, [target], num_classes=5, cfg=cfg)
    # fg: proposal 0 (IoU 0.9), proposal 2 (IoU exactly 0.5), both appended gt boxes; bg: proposal 1
    assert len(s.boxes) == 5
    fg = s.gt_index >= 0
    assert fg.tolist() == [True] * 4 + [False]  # foreground first
    rows = {tuple(b.tolist()): (c.item(), i.item(), tuple(g.tolist()))
            for b, c, i, g in zip(s.boxes, s.gt_classes, s.gt_index, s.gt_boxes)}
    assert rows[(0.0, 0.0, 10.0, 9.0)] == (7, 0, (0.0, 0.0, 10.0, 10.0))
    assert rows[(0.0, 0.0, 20.0, 10.0)] == (7, 0, (0.0, 0.0, 10.0, 10.0))
    assert rows[(0.0, 0.0, 10.0, 10.0)] == (7, 0, (0.0, 0.0, 10.0, 10.0))
    assert rows[(30.0, 30.0, 40.0, 40.0)] == (2, 1, (30.0, 30.0, 40.0, 40.0))
    assert rows[(50.0, 50.0, 60.0, 60.0)][:2] == (5, -1)
    assert not s.boxes.requires_grad


def test_sample_proposals_without_append_gt_and_iou_just_below_half(cfg):
    cfg.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = False
    # [0,0,20,10] has IoU 0.5 (fg); [0,0,20.5,10] has IoU 100/205 < 0.5 (bg)
    proposals = [torch.tensor([[0.0, 0.0, 20.0, 10.0], [0.0, 0.0, 20.5, 10.0]])]
    (s,) = sample_proposals(proposals, [_target([[0, 0, 10, 10]], [1])], num_classes=3, cfg=cfg)
    assert s.boxes.tolist() == proposals[0].tolist()
    assert s.gt_classes.tolist() == [1, 3] and s.gt_index.tolist() == [0, -1]


def test_sample_proposals_counts_fraction_and_zero_gt_images(cfg):
    torch.manual_seed(0)
    near = _box(0, 0, 32, 32).repeat(400, 1) + torch.rand(400, 1)  # IoU > 0.9 with the gt
    far = _box(100, 100, 132, 132).repeat(600, 1) + torch.rand(600, 1)
    proposals = [torch.cat([near, far]), far[:20]]
    targets = [_target([[0, 0, 32, 32]], [4]), _target([], [])]
    s0, s1 = sample_proposals(proposals, targets, num_classes=80, cfg=cfg)
    assert len(s0.boxes) == 512
    assert (s0.gt_classes[:128] == 4).all() and (s0.gt_classes[128:] == 80).all()
    assert (s0.gt_index[:128] == 0).all() and (s0.gt_index[128:] == -1).all()
    assert len(set(map(tuple, s0.boxes.tolist()))) == 512  # sampled without replacement
    # zero gt: everything is background, nothing appended
    assert len(s1.boxes) == 20 and (s1.gt_classes == 80).all() and (s1.gt_index == -1).all()
    assert len(s1.foreground().boxes) == 0 and len(s0.foreground().boxes) == 128


# ---------------------------------------------------------------- Fast R-CNN


def _rois(boxes, classes, gt_boxes, gt_index):
    return SampledRois(torch.tensor(boxes, dtype=torch.float32), torch.tensor(classes),
                       torch.tensor(gt_boxes, dtype=torch.float32), torch.tensor(gt_index))


def test_fast_rcnn_losses_match_hand_computation(cfg):
    # K = 2 classes; RoI 0 is class 1 with gt shifted by (1, 1); RoI 1 is background
    sampled = [_rois([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], [[1, 1, 11, 11], [20, 20, 30, 30]], [0, -1])]
    logits = torch.tensor([[0.5, 1.5, -1.0], [0.0, 0.0, 2.0]], requires_grad=True)
    deltas = torch.zeros(2, 8)
    deltas[0, :4] = 9.0  # class-0 slot: must be ignored
    deltas[1] = 7.0  # background row: must be ignored
    deltas.requires_grad_(True)
    out = fast_rcnn_losses(logits, deltas, sampled, cfg)

    def ce(row, target):
        return math.log(sum(math.exp(v) for v in row)) - row[target]

    assert out["loss_cls"].item() == pytest.approx((ce([0.5, 1.5, -1.0], 1) + ce([0.0, 0.0, 2.0], 2)) / 2,
                                                   rel=1e-6)
    # weights (10,10,5,5): target (10 * 1/10, 10 * 1/10, 0, 0) -> L1 of zero deltas = 2, over 2 sampled RoIs
    assert out["loss_box_reg"].item() == pytest.approx(1.0, rel=1e-6)
    (out["loss_cls"] + out["loss_box_reg"]).backward()
    assert deltas.grad[0, 4:].abs().sum() > 0
    assert deltas.grad[0, :4].abs().sum() == 0 and deltas.grad[1].abs().sum() == 0


def test_fast_rcnn_without_foreground_or_rois(cfg):
    sampled = [_rois([[0, 0, 10, 10]], [3], [[0, 0, 10, 10]], [-1])]
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    deltas = torch.randn(1, 12, requires_grad=True)
    out = fast_rcnn_losses(logits, deltas, sampled, cfg)
    assert out["loss_cls"].item() == pytest.approx(math.log(4.0), rel=1e-6)
    assert out["loss_box_reg"].item() == 0.0
    (out["loss_cls"] + out["loss_box_reg"]).backward()
    empty = SampledRois(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4),
                        torch.zeros(0, dtype=torch.int64))
    out = fast_rcnn_losses(torch.zeros(0, 4, requires_grad=True), torch.zeros(0, 12), [empty], cfg)
    assert out["loss_cls"].item() == 0.0 and out["loss_box_reg"].item() == 0.0
    out["loss_cls"].backward()


def test_fast_rcnn_class_agnostic_deltas_and_unsupported_options(cfg):
    sampled = [_rois([[0, 0, 10, 10]], [0], [[0, 0, 10, 20]], [0])]
    deltas = torch.zeros(1, 4)
    out = fast_rcnn_losses(torch.zeros(1, 3), deltas, sampled, cfg)
    # gt centre y moves 5 px over height 10 -> dy = 10 * 0.5 = 5; dh = 5 * log 2
    assert out["loss_box_reg"].item() == pytest.approx(5.0 + 5.0 * math.log(2.0), rel=1e-6)
    cfg.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = True
    with pytest.raises(ConfigError, match="USE_SIGMOID_CE"):
        fast_rcnn_losses(torch.zeros(1, 3), deltas, sampled, cfg)


# ---------------------------------------------------------------- masks


def _square(x0, y0, x1, y1):
    return [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]


def test_polygon_target_is_rasterised_inside_the_box(cfg):
    # box 14x14 at (10,10) -> 28x28 grid, 2 cells per pixel; square 12..20 -> cells 4..19
    targets = [{"masks": [[_square(12, 12, 20, 20)]]}]
    sampled = [_rois([[10, 10, 24, 24]], [0], [[12, 12, 20, 20]], [0])]
    inside = np.zeros((28, 28), dtype=bool)
    inside[4:20, 4:20] = True
    logits = torch.zeros(1, 3, 28, 28)
    c = 1.25
    logits[0, 0] = torch.where(torch.from_numpy(inside), c, -c)  # gt class 0 channel: right everywhere
    logits[0, 1:] = 50.0  # other classes' channels must not count
    loss = mask_rcnn_loss(logits, sampled, targets, cfg)["loss_mask"]
    assert loss.item() == pytest.approx(softplus(-c), rel=1e-6)
    # a polygon sticking out of the box is clipped to it: left half of the box
    targets = [{"masks": [[_square(0, 0, 17, 30)]]}]
    logits = torch.zeros(1, 3, 28, 28)
    logits[0, 0] = c
    loss = mask_rcnn_loss(logits, sampled, targets, cfg)["loss_mask"]
    assert loss.item() == pytest.approx(0.5 * softplus(-c) + 0.5 * softplus(c), rel=1e-6)


def test_mask_loss_picks_gt_class_channel_over_several_images(cfg):
    targets = [{"masks": [[_square(0, 0, 8, 8)], [_square(0, 0, 2, 2)]]}, {"masks": [[_square(0, 0, 4, 4)]]}]
    # image 0: RoI matched to instance 1 (class 2); image 1: RoI matched to instance 0 (class 1)
    sampled = [_rois([[0, 0, 4, 4]], [2], [[0, 0, 2, 2]], [1]), _rois([[0, 0, 8, 8]], [1], [[0, 0, 4, 4]], [0])]
    logits = torch.zeros(2, 3, 28, 28, requires_grad=True)
    loss = mask_rcnn_loss(logits, sampled, targets, cfg)["loss_mask"]
    # both targets are the top-left quarter of their box; all logits 0 -> log 2 per pixel
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)
    loss.backward()
    grad = logits.grad
    assert grad[0, 2].abs().sum() > 0 and grad[1, 1].abs().sum() > 0
    assert grad[0, :2].abs().sum() == 0 and grad[1, [0, 2]].abs().sum() == 0
    # mean over 2 * 784 pixels: d/dx BCE(0, y) = 0.5 - y
    assert grad[0, 2, 0, 0].item() == pytest.approx(-0.5 / (2 * 784))
    assert grad[0, 2, 27, 27].item() == pytest.approx(0.5 / (2 * 784))


def test_bitmask_targets_equal_polygon_targets_for_a_pixel_aligned_rectangle(cfg):
    bitmask = torch.zeros(1, 40, 40, dtype=torch.bool)
    bitmask[0, 10:24, 10:17] = True  # rows 10..23, columns 10..16: the rectangle [10,10,17,24]
    polygon_targets = [{"masks": [[_square(10, 10, 17, 24)]]}]
    sampled = [_rois([[10, 10, 24, 24], [3, 3, 31, 31]], [0, 0], [[10, 10, 17, 24]] * 2, [0, 0])]
    logits = torch.randn(2, 1, 28, 28)
    cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = True
    from_bits = mask_rcnn_loss(logits, sampled, [{"masks": bitmask}], cfg)["loss_mask"]
    from_polys = mask_rcnn_loss(logits, sampled, polygon_targets, cfg)["loss_mask"]
    assert from_bits.item() == pytest.approx(from_polys.item(), rel=1e-6)
    y = torch.zeros(28, 28)
    y[:, :14] = 1.0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, 0], y, reduction="sum")
    # second RoI [3,3,31,31]: 28 px -> 1 cell per pixel; rectangle cells rows 7..20, columns 7..13
    y2 = torch.zeros(28, 28)
    y2[7:21, 7:14] = 1.0
    expected += torch.nn.functional.binary_cross_entropy_with_logits(logits[1, 0], y2, reduction="sum")
    assert from_polys.item() == pytest.approx(expected.item() / (2 * 784), rel=1e-5)


def test_mask_loss_empty_foreground_and_bad_input(cfg):
    empty = SampledRois(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4),
                        torch.zeros(0, dtype=torch.int64))
    logits = torch.zeros(0, 80, 28, 28, requires_grad=True)
    out = mask_rcnn_loss(logits, [empty], [{"masks": []}], cfg)
    assert out["loss_mask"].item() == 0.0
    out["loss_mask"].backward()
    sampled = [_rois([[0, 0, 10, 10]], [0], [[0, 0, 10, 10]], [0])]
    with pytest.raises(DatasetError, match="image 0, instance 0"):
        mask_rcnn_loss(torch.zeros(1, 80, 28, 28), sampled, [{"masks": [[[0.0, 0.0, 5.0, 5.0]]]}], cfg)
    with pytest.raises(ValueError, match="CLS_AGNOSTIC_MASK"):
        mask_rcnn_loss(torch.zeros(1, 1, 28, 28), sampled, [{"masks": [[_square(0, 0, 5, 5)]]}], cfg)


# ---------------------------------------------------------------- the whole model


def _slim_model(config: str):
    """A real R50 FPN or C4 Mask R-CNN with narrow channels, so a few SGD steps stay quick on a CPU."""
    from pycontrast_det.config import load_config
    from pycontrast_det.modeling import build_model

    overrides = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
                 "MODEL.RESNETS.RES2_OUT_CHANNELS", "32", "MODEL.RESNETS.NORM", "BN",
                 "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
                 "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32"]
    if "FPN" in config:
        overrides += ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FPN.NORM", "BN", "MODEL.ROI_BOX_HEAD.CONV_DIM", "32",
                      "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_BOX_HEAD.NORM", "BN",
                      "MODEL.ROI_MASK_HEAD.NORM", "BN"]
    return build_model(load_config(config, overrides))


@pytest.mark.slow
@pytest.mark.parametrize("config", ["R_50_FPN_1x", "R_50_C4_1x"])  # 28x28 and 14x14 mask targets
def test_sgd_steps_on_one_image_lower_the_total_loss(config):
    torch.manual_seed(0)
    model = _slim_model(config).train()
    size = 64
    x0, y0, x1, y1 = 16.0, 19.0, 51.0, 48.0
    image = torch.zeros(3, size, size)
    image[:, 19:48, 16:51] = 200.0
    instances = {"boxes": torch.tensor([[x0, y0, x1, y1]]), "classes": torch.tensor([1]),
                 "masks": [[[x0, y0, x1, y0, x1, y1, x0, y1]]]}
    empty = {"boxes": torch.zeros(0, 4), "classes": torch.zeros(0, dtype=torch.int64), "masks": []}
    batch = [{"image": image, "height": size, "width": size, "instances": instances},
             {"image": torch.full((3, size, size), 30.0), "height": size, "width": size, "instances": empty}]

    def total_loss(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)  # the same anchor and RoI draws before and after training
        losses = model(batch)
        assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
        return sum(losses.values())

    with torch.no_grad():
        before = total_loss(123).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for step in range(6):
        loss = total_loss(step)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:  # every head learns from its loss
            for name in ("rpn.head.cls_logits.weight", "rpn.head.bbox_pred.weight",
                         "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight",
                         "roi_heads.mask_predictor.mask_fcn_logits.weight"):
                assert model.get_parameter(name).grad.abs().sum() > 0, name
        optimizer.step()
    with torch.no_grad():
        after = total_loss(123).item()
    assert after < 0.95 * before, (before, after)


def test_roi_losses_are_float32_under_autocast(cfg):
    sampled = [_rois([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], [[1, 1, 11, 11], [20, 20, 30, 30]], [0, -1])]
    targets = [{"masks": [[_square(0, 0, 5, 10)]]}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = torch.randn(2, 8)
        logits = torch.nn.Linear(8, 3)(features)
        assert logits.dtype == torch.bfloat16
        out = fast_rcnn_losses(logits, torch.zeros(2, 8, dtype=torch.bfloat16), sampled, cfg)
        masks = mask_rcnn_loss(torch.full((1, 2, 28, 28), 0.5, dtype=torch.bfloat16),
                               [sampled[0].foreground()], targets, cfg)
    assert out["loss_cls"].dtype == out["loss_box_reg"].dtype == masks["loss_mask"].dtype == torch.float32
    assert out["loss_box_reg"].item() == pytest.approx(1.0, rel=1e-6)
    assert masks["loss_mask"].item() == pytest.approx(0.5 * softplus(-0.5) + 0.5 * softplus(0.5), rel=1e-6)
