"""Config system: _BASE_ chains, detectron2 defaults, KEY VALUE overrides, and errors that name the key."""
from __future__ import annotations

import pytest
import yaml

from pycontrast_det.config import get_cfg, load_config, resolve_config_path
from pycontrast_det.errors import ConfigError
from pycontrast_det.resources import configs_dir

SCHEDULES = {"1x": ([60000, 80000], 90000), "2x": ([120000, 160000], 180000), "6x": ([480000, 520000], 540000)}


@pytest.mark.parametrize("sched", ["1x", "2x", "6x"])
@pytest.mark.parametrize("variant", ["", "_rand", "_infomin"])
def test_fpn_configs_follow_pycontrast_protocol(sched: str, variant: str) -> None:
    cfg = load_config(f"R_50_FPN_{sched}{variant}")
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.MASK_ON
    assert cfg.MODEL.RESNETS.NORM == cfg.MODEL.FPN.NORM == cfg.MODEL.ROI_BOX_HEAD.NORM == "SyncBN"
    assert cfg.MODEL.ROI_MASK_HEAD.NORM == "SyncBN"
    assert (cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC) == (4, 1)
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32], [64], [128], [256], [512]]
    assert (cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.PRE_NMS_TOPK_TEST) == (2000, 1000)
    assert (cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TEST) == (1000, 1000)
    assert cfg.INPUT.MIN_SIZE_TRAIN == list(range(640, 801, 32))
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.WARMUP_ITERS) == (16, 0.02, 1000)
    assert (cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER) == SCHEDULES[sched]
    assert cfg.TEST.PRECISE_BN.ENABLED and cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0
    if variant == "_infomin":
        assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
        assert cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375] and cfg.MODEL.WEIGHTS == ""
    else:
        assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.RESNETS.STRIDE_IN_1X1
        assert cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]
        assert cfg.MODEL.WEIGHTS == ("" if variant == "_rand" else "detectron2://ImageNetPretrained/MSRA/R-50.pkl")


@pytest.mark.parametrize("sched", ["1x", "2x"])
def test_c4_configs(sched: str) -> None:
    cfg = load_config(f"R_50_C4_{sched}_infomin")
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone" and cfg.MODEL.RESNETS.OUT_FEATURES == ["res4"]
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm"
    assert (cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TEST) == (6000, 1000)
    assert (cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN) == (12000, 2000)
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32, 64, 128, 256, 512]]
    assert (cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER) == SCHEDULES[sched]


def test_overrides_decode_like_detectron2() -> None:
    cfg = load_config("R_50_FPN_1x", ["SOLVER.BASE_LR", "1", "INPUT.MIN_SIZE_TRAIN", "(320, 352)",
                                      "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.RESNETS.NORM", "GN"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.INPUT.MIN_SIZE_TRAIN == [320, 352]
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3 and cfg.MODEL.RESNETS.NORM == "GN"


@pytest.mark.parametrize("overrides, message", [
    (["MODEL.ROI_HEADS.NUM_CLASES", "3"], "MODEL.ROI_HEADS.NUM_CLASSES"),  # did-you-mean
    (["MODEL.RESNET.NORM", "BN"], "MODEL.RESNET"),
    (["SOLVER.BASE_LR", "fast"], "SOLVER.BASE_LR"),
    (["SOLVER.BASE_LR"], "KEY VALUE"),
    (["MODEL", "x"], "section"),
])
def test_bad_overrides_name_the_key(overrides: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config("R_50_FPN_1x", overrides)


def test_file_errors(tmp_path) -> None:
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text(yaml.safe_dump({"_BASE_": str(configs_dir() / "R_50_FPN_1x.yaml"),
                                       "MODEL": {"RESNETS": {"NORMS": "BN"}}}))
    with pytest.raises(ConfigError, match=r"MODEL\.RESNETS\.NORMS.*bad\.yaml"):
        load_config(bad_key)
    missing_base = tmp_path / "orphan.yaml"
    missing_base.write_text('_BASE_: "nope.yaml"\n')
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(missing_base)
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(not_yaml)
    with pytest.raises(ConfigError, match="R_50_FPN_1x"):  # the error lists the shipped configs
        resolve_config_path("R_50_FPN_9x")


def test_frozen_dump_roundtrip() -> None:
    cfg = load_config("R_50_C4_1x", ["SOLVER.MAX_ITER", "7"])
    with pytest.raises(ConfigError, match="frozen"):
        cfg.SOLVER.MAX_ITER = 8
    again = load_config(yaml.safe_load(cfg.dump()))
    assert again == cfg
    assert get_cfg().SOLVER.MAX_ITER == 40000  # defaults untouched


def test_fixture_configs_load(d2_fixtures) -> None:
    for arch in ("fpn", "c4"):
        cfg = load_config(d2_fixtures / arch / "config.yaml")
        assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80
