"""Evaluation: decoding, PCK (the seed's and bearpaw's), COCO keypoint AP, infer, evaluate_checkpoint."""

import contextlib
import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from hgpose.cli import main
from hgpose.data.transforms import crop_box_from_bbox, image_to_frame
from hgpose.evaluate import evaluate_checkpoint, evaluate_inference, format_evaluation
from hgpose.evaluation.coco import coco_keypoint_stats, coco_results
from hgpose.evaluation.inference import Inference, infer
from hgpose.evaluation.pck import pck, pck_bearpaw, pck_bearpaw_epoch, pck_curve, seed_normalizer
from hgpose.keypoints import KEYPOINT_NAMES, PERSON_CATEGORY
from hgpose.model.heatmaps import decode_heatmaps, heatmap_loss, render_heatmaps
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.model.weights import save_model
from hgpose.runtime.files import UserError

# --- PCK, computed by hand --------------------------------------------------------------------------


def test_seed_normalizer():
    assert seed_normalizer(64) == 6.4
    assert seed_normalizer(32) == 3.2


def test_pck_excludes_unlabelled_keypoints():
    gt = np.zeros((1, 3, 2))
    pred = np.array([[[1.0, 0.0], [100.0, 0.0], [100.0, 0.0]]])  # joint 0 right, joints 1 and 2 far off
    result = pck(pred, gt, np.array([[2, 0, 1]]), normalizer=4.0)
    assert result.counted.tolist() == [1, 0, 1]  # v=0 not counted, v=1 counted
    assert result.correct.tolist() == [1, 0, 0]
    assert result.overall == 0.5


def test_pck_boundary_is_strict():
    gt = np.zeros((1, 2, 2))
    pred = np.array([[[2.0, 0.0], [1.999, 0.0]]])  # distance / 4 = exactly 0.5, and just under
    result = pck(pred, gt, np.array([[2, 2]]), normalizer=4.0, threshold=0.5)
    assert result.correct.tolist() == [0, 1]
    # the seed's setting: c = 64 / 10 = 6.4, so 3.2 heatmap px is just out
    seed = pck(np.array([[[3.2, 0.0], [0.0, 3.19]]]), gt, np.array([[2, 2]]), seed_normalizer(64))
    assert seed.correct.tolist() == [0, 1]


def test_pck_joint_without_labels_is_nan_and_left_out_of_the_mean():
    gt = np.zeros((2, 3, 2))
    pred = np.zeros((2, 3, 2))
    pred[:, 1] = 10.0  # joint 1 always wrong
    visibility = np.array([[2, 2, 0], [2, 1, 0]])  # joint 2 never labelled
    result = pck(pred, gt, visibility, normalizer=1.0)
    assert math.isnan(result.per_joint[2])
    assert result.per_joint[:2].tolist() == [1.0, 0.0]
    assert result.mean_per_joint == 0.5
    assert result.to_dict()["per_joint"]["2"] is None  # JSON-safe NaN; joints named by number unless 17


def test_pck_pooled_and_per_joint_means_differ():
    # joint 0: 3 of 3 right; joint 1: 0 of 1 right -> pooled 3/4, mean of joints (1 + 0) / 2
    gt = np.zeros((3, 2, 2))
    pred = np.zeros((3, 2, 2))
    pred[0, 1] = 5.0
    visibility = np.array([[2, 2], [2, 0], [1, 0]])
    result = pck(pred, gt, visibility, normalizer=1.0)
    assert result.overall == 0.75
    assert result.mean_per_joint == 0.5


def test_pck_accepts_torch_and_per_sample_normalizers():
    rng = np.random.default_rng(0)
    pred, gt = rng.normal(size=(5, 17, 2)) * 3, rng.normal(size=(5, 17, 2)) * 3
    visibility = rng.integers(0, 3, size=(5, 17))
    a = pck(pred, gt, visibility, 6.4)
    b = pck(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(visibility), torch.full((5,), 6.4))
    assert a.overall == b.overall and np.array_equal(a.correct, b.correct)
    curve = pck_curve(pred, gt, visibility, 6.4, thresholds=[0.01, 0.5, 100.0])
    assert curve[1] == a.overall and curve[0] <= curve[1] <= curve[2] == 1.0


# --- PCK as bearpaw/pytorch-pose computes it -----------------------------------------------------------


def reference_bearpaw_accuracy(output, target, idxs, thr=0.5):
    """A literal loop transcription of pytorch-pose's get_preds/calc_dists/dist_acc/accuracy."""
    def get_preds(scores):
        n, k, h, w = scores.shape
        preds = torch.zeros(n, k, 2)
        for i in range(n):
            for j in range(k):
                idx = int(scores[i, j].reshape(-1).argmax()) + 1
                if scores[i, j].max() > 0:
                    preds[i, j] = torch.tensor([(idx - 1) % w + 1, (idx - 1) // w + 1])
        return preds

    preds, gts = get_preds(output), get_preds(target)
    norm = output.shape[3] / 10
    acc = torch.zeros(len(idxs) + 1)
    total, count = 0.0, 0
    for i, joint in enumerate(idxs):
        dists = [float(torch.dist(preds[n, joint - 1], gts[n, joint - 1]) / norm)
                 for n in range(len(preds)) if gts[n, joint - 1, 0] > 1 and gts[n, joint - 1, 1] > 1]
        acc[i + 1] = sum(d < thr for d in dists) / len(dists) if dists else -1
        if acc[i + 1] >= 0:
            total, count = total + acc[i + 1], count + 1
    if count:
        acc[0] = total / count
    return acc


def test_pck_bearpaw_matches_the_reference_loops():
    gen = torch.Generator().manual_seed(0)
    keypoints = torch.rand(6, 5, 2, generator=gen) * 18 - 1  # some off the 16x16 map, some on row/col 0
    visibility = torch.randint(0, 3, (6, 5), generator=gen)
    target, _ = render_heatmaps(keypoints, visibility, 16)
    output = target + 0.3 * torch.rand(target.shape, generator=gen) - 0.1
    output[0, 0] = -1.0  # a map with no positive value predicts (0, 0), as theirs
    ours = pck_bearpaw(output, target)
    expected = reference_bearpaw_accuracy(output, target, idxs=[1, 2, 3, 4, 5])
    assert torch.allclose(ours, expected)
    assert torch.allclose(pck_bearpaw(output, target, joints=[0, 2]),
                          reference_bearpaw_accuracy(output, target, idxs=[1, 3]))


def test_pck_bearpaw_differs_from_the_seed_pck():
    # one batch of 4 people, 2 joints on a 64x64 map (c = 6.4)
    gt = torch.tensor([[[20.0, 20.0], [0.0, 30.0]],  # joint 1 on column 0: bearpaw ignores it (1-based x = 1)
                       [[20.0, 20.0], [40.0, 40.0]],
                       [[20.0, 20.0], [40.0, 40.0]],
                       [[20.0, 20.0], [40.0, 40.0]]])
    visibility = torch.full((4, 2), 2)
    target, _ = render_heatmaps(gt, visibility, 64)
    pred = gt.clone()
    pred[1:, 1] += 10.0  # joint 1 wrong wherever bearpaw counts it
    output, _ = render_heatmaps(pred, visibility, 64)
    seed = pck(decode_heatmaps(output)[0], gt, visibility, seed_normalizer(64))
    assert seed.overall == 5 / 8  # pooled: 4 right of joint 0, 1 of joint 1
    bearpaw = pck_bearpaw(output, target)
    assert bearpaw.tolist() == [0.5, 1.0, 0.0]  # (1 + 0) / 2: joint means, the column-0 keypoint dropped

    # the epoch figure: batch figures averaged, weighted by batch size (their AverageMeter)
    epoch = pck_bearpaw_epoch(np.array([[0.5, 1.0, 0.0], [1.0, 1.0, -1.0]]), np.array([4, 2]))
    assert epoch.overall == pytest.approx((0.5 * 4 + 1.0 * 2) / 6)
    assert epoch.per_joint.tolist() == [1.0, 0.0]  # -1 entries skipped


# --- decoding ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("x, y", [(10.0, 20.0), (10.3, 20.7), (31.5, 31.49), (0.2, 5.6), (-0.4, 63.4),
                                  (63.45, 0.0), (62.75, 1.25), (40.01, 7.99)])
def test_decode_of_a_rendered_target_is_within_half_a_pixel(x, y):
    keypoints = torch.tensor([[[x, y], [y, x]]])
    heatmaps, _ = render_heatmaps(keypoints, torch.tensor([[2, 2]]), 64)
    coords, confidence = decode_heatmaps(heatmaps)
    assert coords.dtype == torch.float32 and coords.shape == (1, 2, 2)
    assert (coords - keypoints).abs().max() < 0.5
    assert torch.equal(confidence, heatmaps.amax(dim=(2, 3)))
    assert confidence.min() >= math.exp(-0.25) - 1e-6  # the nearest pixel is at most (0.5, 0.5) away


def test_decode_quarter_pixel_shift_rules():
    heatmaps = torch.zeros(1, 4, 8, 8)
    heatmaps[0, 0, 3, 5], heatmaps[0, 0, 3, 6], heatmaps[0, 0, 2, 5] = 1.0, 0.5, 0.2  # right and up larger
    heatmaps[0, 1, 4, 4] = 1.0  # equal neighbours: no shift
    heatmaps[0, 2, 0, 7], heatmaps[0, 2, 0, 6], heatmaps[0, 2, 1, 7] = 1.0, 0.9, 0.9  # corner: no shift
    heatmaps[0, 3, 5, 1], heatmaps[0, 3, 5, 0], heatmaps[0, 3, 6, 1] = 1.0, 0.4, 0.1  # left and down larger
    coords, confidence = decode_heatmaps(heatmaps)
    assert coords[0].tolist() == [[5.25, 2.75], [4.0, 4.0], [7.0, 0.0], [0.75, 5.25]]
    assert confidence[0].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_decode_handles_bf16_and_channels_last():
    keypoints = torch.rand(3, 17, 2) * 60 + 1
    heatmaps, _ = render_heatmaps(keypoints, torch.full((3, 17), 2), 64)
    expected, _ = decode_heatmaps(heatmaps)
    coords, _ = decode_heatmaps(heatmaps.contiguous(memory_format=torch.channels_last))
    assert torch.equal(coords, expected)
    coords_bf16, _ = decode_heatmaps(heatmaps.bfloat16())
    assert (coords_bf16 - keypoints).abs().max() < 0.5


# --- COCO keypoint AP --------------------------------------------------------------------------------------


def write_coco(path, people_per_image=(2, 1), size=(200, 160)) -> dict:
    """A tiny annotation file, no images needed: people of 17 visible keypoints."""
    rng = np.random.default_rng(1)
    images, annotations = [], []
    for image_id, people in enumerate(people_per_image, start=1):
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": size[0],
                       "height": size[1]})
        for _ in range(people):
            x, y = rng.uniform(10, 100), rng.uniform(10, 60)
            w, h = rng.uniform(40, 80), rng.uniform(60, 90)
            points = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), np.full(17, 2.0)], -1)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "iscrowd": 0, "bbox": [x, y, w, h], "area": w * h, "num_keypoints": 17,
                                "keypoints": points.reshape(-1).round(2).tolist()})
    data = {"images": images, "annotations": annotations, "categories": [PERSON_CATEGORY]}
    path.write_text(json.dumps(data))
    return data


def test_coco_ap_is_one_for_ground_truth_and_lower_when_perturbed(tmp_path):
    data = write_coco(tmp_path / "gt.json")
    image_ids = [a["image_id"] for a in data["annotations"]]
    points = np.array([a["keypoints"] for a in data["annotations"]]).reshape(-1, 17, 3)[..., :2]
    confidence = np.full(points.shape[:2], 0.9)
    exact = coco_keypoint_stats(tmp_path / "gt.json", coco_results(image_ids, points, confidence), image_ids)
    assert exact["AP"] == pytest.approx(1.0) and exact["AR"] == pytest.approx(1.0)
    noisy = points + np.random.default_rng(0).normal(scale=4.0, size=points.shape)
    perturbed = coco_keypoint_stats(tmp_path / "gt.json", coco_results(image_ids, noisy, confidence),
                                    image_ids)
    assert perturbed["AP"] < 0.9

    # restricted to one image, only its people count: still 1.0 for exact predictions
    only_first = [r for r in coco_results(image_ids, points, confidence) if r["image_id"] == 1]
    assert coco_keypoint_stats(tmp_path / "gt.json", only_first, [1])["AP"] == pytest.approx(1.0)


def test_coco_results_load_with_pycocotools(tmp_path):
    write_coco(tmp_path / "gt.json")
    points = np.random.default_rng(0).uniform(0, 100, (2, 17, 2))
    results = coco_results([1, 2], points, np.full((2, 17), 0.5))
    assert len(results[0]["keypoints"]) == 51 and results[0]["score"] == 0.5
    (tmp_path / "results.json").write_text(json.dumps(results))
    coco = COCO(str(tmp_path / "gt.json"))
    loaded = coco.loadRes(str(tmp_path / "results.json"))
    assert len(loaded.getAnnIds()) == 2


def test_evaluate_inference_maps_predictions_back_to_the_image(tmp_path):
    data = write_coco(tmp_path / "gt.json")
    anns = data["annotations"]
    boxes = crop_box_from_bbox(np.array([a["bbox"] for a in anns]))
    image_points = np.array([a["keypoints"] for a in anns]).reshape(-1, 17, 3)[..., :2]
    gt = image_to_frame(image_points, boxes, 64).astype(np.float32)
    n = len(anns)
    dataset = SimpleNamespace(boxes=boxes, heatmap_size=64, index=SimpleNamespace(
        image_ids=np.array([a["image_id"] for a in anns]), annotation_file=tmp_path / "gt.json"))
    visibility = np.full((n, 17), 2)
    visibility[0, :5] = 1
    inference = Inference(indices=np.arange(n), coords=gt.copy(), confidence=np.ones((n, 17), np.float32),
                          gt=gt, visibility=visibility, valid=np.ones(n, bool), loss=1e-4, skipped=0)
    result = evaluate_inference(inference, dataset, thresholds=[0.1, 0.5])
    assert result["pck"]["all"]["overall"] == 1.0
    assert result["pck"]["v1"]["counted"] == 5 and result["pck"]["v2"]["counted"] == 17 * n - 5
    assert result["pck_curve"]["all"] == [1.0, 1.0]
    assert result["coco"]["AP"] == pytest.approx(1.0)
    first = np.array(result["coco_results"][0]["keypoints"]).reshape(17, 3)
    assert np.allclose(first[:, :2], image_points[0], atol=0.01) and (first[:, 2] == 1).all()
    assert "nose" in format_evaluation(result)


# --- infer ----------------------------------------------------------------------------------------------


class FixedHeatmaps(torch.nn.Module):
    """Predicts the same heatmaps for every image (plus a parameter, so .to() has work to do)."""

    def __init__(self, heatmaps):
        super().__init__()
        self.register_buffer("heatmaps", heatmaps)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.heatmaps.expand(len(x), -1, -1, -1) * self.scale


def make_batches(keypoints, visibility, valid, order, batch_size=2, size=32):
    batches = []
    for start in range(0, len(order), batch_size):
        i = torch.as_tensor(order[start:start + batch_size])
        batches.append({"image": torch.zeros(len(i), 3, size, size, dtype=torch.uint8),
                        "keypoints": keypoints[i], "visibility": visibility[i] * valid[i, None], "index": i,
                        "valid": valid[i]})
    return batches


def five_samples(seed: int):
    """Keypoints, visibility and validity of 5 samples (the third unreadable), and one fixed prediction."""
    gen = torch.Generator().manual_seed(seed)
    keypoints = torch.rand(5, 17, 2, generator=gen) * 7
    visibility = torch.randint(0, 3, (5, 17), generator=gen)
    valid = torch.tensor([True, True, False, True, True])
    predicted, _ = render_heatmaps(torch.full((1, 17, 2), 3.3), torch.full((1, 17), 2), 8)
    return keypoints, visibility, valid, predicted


def test_infer_sorts_decodes_and_averages_the_loss_over_valid_samples():
    keypoints, visibility, valid, predicted = five_samples(0)
    model = FixedHeatmaps(predicted)
    model.train()
    batches = make_batches(keypoints, visibility, valid, order=[3, 1, 4, 0, 2])
    result = infer(model, batches, device="cpu", progress=False)
    assert model.training  # mode restored
    assert result.indices.tolist() == [0, 1, 2, 3, 4] and result.skipped == 1
    assert result.valid.tolist() == valid.tolist()
    assert np.allclose(result.gt, keypoints.numpy()) and (result.visibility[2] == 0).all()
    assert np.allclose(result.coords, 3.25) and result.coords.shape == (5, 17, 2)
    targets, _ = render_heatmaps(keypoints, visibility * valid[:, None], 8)
    expected = heatmap_loss(predicted.expand(5, -1, -1, -1), targets, valid)
    assert result.loss == pytest.approx(float(expected), rel=1e-6)

    bf16 = infer(model, batches, device="cpu", precision="bf16", bearpaw=True, progress=False)
    assert bf16.bearpaw_batches.shape == (3, 18) and bf16.bearpaw_batch_sizes.tolist() == [2, 2, 1]
    with pytest.raises(UserError, match="empty"):
        infer(model, [], device="cpu", progress=False)


def _ddp_worker(rank, world_size, port, keypoints, visibility, valid, predicted, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        # DistributedSampler-style shards of 5 samples on 2 ranks: padded with a repeat of sample 0
        order = [0, 1, 2, 3, 4, 0][rank::world_size]
        batches = make_batches(keypoints, visibility, valid, order=order)
        result = infer(FixedHeatmaps(predicted), batches, device="cpu", progress=False)
        queue.put((rank, result.indices.tolist(), result.loss, result.skipped))
    finally:
        dist.destroy_process_group()


def test_infer_gathers_every_rank_once_under_torch_distributed():
    import socket

    import torch.multiprocessing as mp

    keypoints, visibility, valid, predicted = five_samples(1)
    single = infer(FixedHeatmaps(predicted), make_batches(keypoints, visibility, valid, order=range(5)),
                   device="cpu", progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, port, keypoints, visibility, valid, predicted, queue), nprocs=2,
                       start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    for _, indices, loss, skipped in results:
        assert indices == [0, 1, 2, 3, 4] and skipped == 1
        assert loss == pytest.approx(single.loss, rel=1e-6)  # the padded repeat is not counted twice


# --- evaluate_checkpoint and the CLI ---------------------------------------------------------------------

TINY = ModelConfig(depth=2, features=32, input_size=64, bottleneck_residuals=3)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(build_model(TINY, seed=0), path)
    return path


def test_evaluate_checkpoint_end_to_end(synth_dataset, tiny_checkpoint, tmp_path):
    out = tmp_path / "eval" / "test_eval.json"
    result = evaluate_checkpoint(tiny_checkpoint, synth_dataset, split="val2017", batch_size=8, device="cpu",
                                 out=out, thresholds=[0.5, 1.0], pck_style="bearpaw", progress=False,
                                 cache="off")
    written = json.loads(out.read_text())
    assert written["pck"]["all"]["overall"] == result["pck"]["all"]["overall"]
    assert set(written["pck"]) == {"all", "v2", "v1"}
    assert list(written["pck"]["all"]["per_joint"]) == list(KEYPOINT_NAMES)
    assert set(written["coco"]) >= {"AP", "AP50", "AP75", "AP_M", "AP_L", "AR"}
    assert "pck_bearpaw" in written and "coco_results" not in written
    assert written["precision"] in ("fp32", "bf16")  # "auto" resolved to what ran
    results_file = tmp_path / "eval" / "test_eval_keypoints.json"
    assert written["results_file"] == str(results_file)
    coco = COCO(str(synth_dataset / "annotations" / "person_keypoints_val2017.json"))
    assert len(coco.loadRes(str(results_file)).getAnnIds()) == result["instances"] - result["skipped"]
    assert "COCO keypoints (ground-truth boxes): AP" in format_evaluation(result)


def test_evaluate_checkpoint_errors(synth_dataset, tiny_checkpoint, tmp_path):
    with pytest.raises(UserError, match="input-size 64"):
        evaluate_checkpoint(tiny_checkpoint, synth_dataset, input_size=256, device="cpu", progress=False)
    with pytest.raises(UserError, match="no annotation file"):
        evaluate_checkpoint(tiny_checkpoint, synth_dataset, split="test2017", device="cpu", progress=False)
    with pytest.raises(UserError, match="pck-style"):
        evaluate_checkpoint(tiny_checkpoint, synth_dataset, pck_style="mpii", device="cpu", progress=False)
    empty = tmp_path / "empty"
    (empty / "annotations").mkdir(parents=True)
    crowd = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 50, 50], "area": 2500,
             "num_keypoints": 17, "keypoints": [10, 10, 2] * 17}  # the only person is a crowd: none kept
    (empty / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}], "annotations": [crowd],
         "categories": [PERSON_CATEGORY]}))
    with pytest.raises(UserError, match="no person instances"):
        evaluate_checkpoint(tiny_checkpoint, empty, device="cpu", progress=False)


def test_evaluate_cli(synth_dataset, tiny_checkpoint, tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_dataset),
                 "--workers", "0", "--device", "cpu", "--no-progress", "--cache", "off",
                 "--out", str(tmp_path / "e.json")])
    assert code == 0
    assert "left_ankle" in capsys.readouterr().out and (tmp_path / "e_keypoints.json").is_file()
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_dataset),
                 "--split", "nope", "--device", "cpu"])
    assert code == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_infer_memory_stays_flat_over_hundreds_of_batches(tmp_path):
    """RSS in a fresh process over 200 batches of a small model (per-batch outputs kept in lists
    grew it by ~0.3 MB a batch here: small tensors pinning freed big blocks)."""
    import subprocess
    import sys

    script = """
import os, sys, torch
from hgpose.runtime.allocator import keep_freed_memory
keep_freed_memory()  # as every hgpose command runs
torch.set_num_threads(1)
from hgpose.data.loader import make_loader
from hgpose.evaluate import infer
from hgpose.model import ModelConfig, build_model

BATCHES, BATCH, SIZE = 200, 8, 128
rss = {}

class Samples(torch.utils.data.Dataset):
    image = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8)
    def __len__(self):
        return BATCHES * BATCH
    def __getitem__(self, i):
        if i % (BATCH * 25) == 0:
            rss[i // BATCH] = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {"image": self.image, "keypoints": torch.full((17, 2), SIZE / 8), "visibility": torch.full((17,), 2),
                "index": torch.tensor(i), "valid": torch.tensor(True)}

model = build_model(ModelConfig(features=8, depth=2, input_size=SIZE))
result = infer(model, make_loader(Samples(), BATCH, shuffle=False),
               device="cpu", progress=False)
assert len(result.indices) == BATCHES * BATCH
print(rss[75], rss[175])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    at_75, at_175 = map(int, done.stdout.split())
    assert at_175 - at_75 < 8 << 20, f"RSS grew {(at_175 - at_75) / 2**20:.1f} MB over 100 batches"


def test_coco_ground_truth_holds_only_the_evaluated_images_and_scores_as_the_whole_file(tmp_path):
    from hgpose.evaluation.coco import coco_ground_truth

    data = write_coco(tmp_path / "gt.json", people_per_image=(2, 1, 3, 1))
    for ann in data["annotations"]:
        ann["segmentation"] = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
    data["annotations"][4]["iscrowd"] = 1  # crowd people are ground truth too (ignored regions)
    (tmp_path / "gt.json").write_text(json.dumps(data))
    chosen = [2, 3]
    gt = coco_ground_truth(tmp_path / "gt.json", chosen)
    assert sorted(gt.getImgIds()) == chosen
    assert sorted(gt.getAnnIds()) == [a["id"] for a in data["annotations"] if a["image_id"] in chosen]
    assert all("segmentation" not in a for a in gt.dataset["annotations"])

    anns = [a for a in data["annotations"] if a["image_id"] in chosen]
    points = np.array([a["keypoints"] for a in anns]).reshape(-1, 17, 3)[..., :2]
    noisy = points + np.random.default_rng(0).normal(scale=3.0, size=points.shape)
    results = coco_results([a["image_id"] for a in anns], noisy, np.full(points.shape[:2], 0.8))
    with contextlib.redirect_stdout(io.StringIO()):
        whole = COCO(str(tmp_path / "gt.json"))
    subset_stats = coco_keypoint_stats(tmp_path / "gt.json", results, chosen)
    assert subset_stats == coco_keypoint_stats(whole, results, chosen)
    assert 0 < subset_stats["AP"] < 1
