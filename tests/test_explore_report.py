"""The explore report of a real training run (`--run`, over-training section from its per-epoch
checkpoints), checked in a real browser: headless Chromium loads every image and shows every section."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from hgpose.cli import main
from hgpose.explore.compare import COMPARE_TITLES, _run_sentence
from hgpose.explore.sections import SECTION_TITLES
from hgpose.explore.trajectory import chosen_epochs, lr_drop_epoch
from hgpose.keypoints import KEYPOINT_NAMES
from hgpose.model.hourglass import ModelConfig
from hgpose.train.config import TrainConfig
from hgpose.train.loop import train

TINY = ModelConfig(depth=2, features=32, input_size=64)
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: a second thread only waits on 2 cores
BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)

# Added to a copy of the page only (the report itself has no script): after load, record on <body> how many
# images there are, how many decoded (naturalWidth > 0), and the section headings the browser shows.
PROBE_SCRIPT = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-loaded", images.filter(i => i.complete && i.naturalWidth > 0).length);
  document.body.setAttribute("data-sections",
    [...document.querySelectorAll("section > h2")].filter(h => h.offsetHeight > 0).map(h => h.textContent).join("|"));
});</script>"""


@pytest.fixture(scope="module")
def run_dir(synth_dataset, tmp_path_factory):
    """A real three-epoch training run of a tiny model (per-epoch checkpoints, metrics.csv)."""
    out = tmp_path_factory.mktemp("explore_run") / "run"
    config = TrainConfig(data=str(synth_dataset), out=str(out), epochs=3, batch_size=8, workers=0, progress=False,
                         cache="off", model=TINY, subset=16, lr_patience=1)
    return train(config)


def rendered(page, tmp_path) -> dict[str, str]:
    """The <body> attributes the probe script set, after Chromium loaded a copy of the page."""
    copy = tmp_path / f"rendered_{page.parent.name}.html"
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE_SCRIPT + "</body>"), encoding="utf-8")
    result = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                             "--dump-dom", copy.as_uri()], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body, "Chromium printed no DOM"
    return dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))


def assert_self_contained(html: str):
    """Every section explains itself at length and states its sample count; no scripts, nothing external."""
    for section in re.findall(r"<section.*?</section>", html, flags=re.S):
        assert re.search(r'<p class="intro">.{200,}?</p>', section), "a section lacks its explanation"
        assert re.search(r'<p class="cost">\d+ ', section), "a section does not state its sample count"
        assert "data:image/png;base64," in section
    assert "<script" not in html and not re.search(r'(src|href)="(?!data:|#)', html)


def assert_renders(page, titles: list[str], tmp_path):
    """Chromium shows every section, in order, and decodes every image of the page."""
    seen = rendered(page, tmp_path)
    assert int(seen["images"]) == page.read_text(encoding="utf-8").count("<img ") > 20
    assert seen["loaded"] == seen["images"], seen
    assert seen["sections"].split("|") == titles


def test_epoch_choice_and_lr_drop(tmp_path):
    assert chosen_epochs(range(1, 21), 5) == [1, 5, 10, 15, 20]
    assert chosen_epochs([1, 2, 3], 2) == [1, 2, 3]
    (tmp_path / "metrics.csv").write_text("epoch,lr,train_loss\n1,0.001,1\n2,0.001,1\n3,0.0002,1\n4,0.0002,1\n")
    assert lr_drop_epoch(tmp_path) == 3
    (tmp_path / "metrics.csv").write_text("epoch,lr\n1,0.001\n2,0.001\n")
    assert lr_drop_epoch(tmp_path) is None


@pytest.mark.slow
def test_explore_run_report_has_every_section_and_renders_in_chromium(run_dir, tmp_path, capsys):
    out = tmp_path / "explore"
    code = main(["explore", "--run", str(run_dir), "--every", "2", "--samples", "8", "--probe-samples", "0",
                 "--dependency-samples", "2", "--show", "1", "--occlusion-samples", "1", "--attribution-samples", "1",
                 "--ig-steps", "4", "--out", str(out), "--device", "cpu"])
    assert code in (0, None)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert re.findall(r"<h2>(.*?)</h2>", html) == list(SECTION_TITLES)  # --run adds "Over training"
    assert_self_contained(html)
    # the header: the subset's PCK with its interval next to the whole split's, and a warning for 8 samples
    assert "PCK on the whole split" in html and "95% bootstrap interval" in html
    assert 'class="warning"' in html and "Only 8 samples" in html and "Only 8 samples" in capsys.readouterr().err
    # sentences computed from the figures, not fixed claims
    assert "joint-like blobs" not in html and "often the joint's left/right twin" not in html
    assert "by construction" in html and "Left/right swaps over all 8 samples" in html

    summary = json.loads((out / "explore.json").read_text())
    assert summary["checkpoint"].endswith("best.safetensors") and summary["samples"] == 8
    assert summary["split_pck"]["pck"] is not None  # val2017 holds more than 8: one evaluation pass
    low, high = summary["pck"]["interval"]
    assert low <= summary["pck"]["overall"] <= high
    assert set(summary["lesions"]) >= {"intact", "level 2 low"}
    assert summary["dependency"]["samples"] == 2 and summary["attributions"]["samples"] == 1
    assert summary["probes"]["samples"] == summary["loaded_samples"] > 8
    assert 0 <= summary["calibration"]["ece"] <= 1
    trajectory = summary["over_training"]
    assert trajectory["epochs"] == [1, 2, 3] and trajectory["lr_drop"] == lr_drop_epoch(run_dir)
    probes = summary["probes"]
    assert probes["stages"][-1] == "head" and probes["pooled"]["stages"][-1] == "output"  # the pooled reference row
    assert len(probes["pixel_pck"]) == len(probes["stages"]) == len(probes["cka"]) == len(probes["sides"])
    assert probes["sides"][0] == probes["sides"][-1] == 16  # stem and head at the heatmap's resolution
    assert set(probes["encoding_stage"]) == set(KEYPOINT_NAMES)
    assert len(trajectory["cka_to_final"][-1]) == len(probes["stages"])
    assert len(trajectory["probe_pck"]) == 3 and len(trajectory["probe_pck"][0]) == len(probes["stages"])
    assert trajectory["cka_to_final"][-1][0] == pytest.approx(1.0)  # the last epoch against itself
    assert trajectory["analysed_epoch"] in trajectory["epochs"] and "The other sections analyse epoch" in html
    # the third edition's sections: one stack scored as the report's PCK; every instrument on the loaded samples
    assert summary["stacks"]["pck"] == [pytest.approx(summary["pck"]["overall"])]
    assert summary["dissection"]["samples"] == summary["loaded_samples"]
    assert [s["stage"] for s in summary["dissection"]["stages"]] == probes["stages"]
    assert summary["receptive_fields"]["names"][:17] == list(KEYPOINT_NAMES)
    assert summary["receptive_fields"]["samples"] == 8
    assert summary["facing"]["samples"] == probes["samples"] and summary["facing"]["stages"] == probes["stages"]

    if BROWSER is None:
        pytest.skip("no headless Chromium installed (apt-get install chromium)")
    assert_renders(out / "index.html", list(SECTION_TITLES), tmp_path)
    # the check can fail: a page with one broken image is caught
    broken = tmp_path / "broken" / "index.html"
    broken.parent.mkdir()
    broken.write_text(re.sub(r'src="data:image/png;base64,[^"]{40}', 'src="data:image/png;base64,AAAA', html,
                             count=1), encoding="utf-8")
    seen = rendered(broken, tmp_path)
    assert int(seen["loaded"]) == int(seen["images"]) - 1


def test_explore_run_errors_are_one_line(run_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for args, expected in (([str(tmp_path / "missing")], "not a directory"),
                           ([str(bare), "--checkpoint", str(run_dir / "best.safetensors")], "checkpoints")):
        code = main(["explore", "--run", *args, "--data", "x", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    code = main(["explore", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--checkpoint" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_explore_compare_of_two_epochs_has_every_section_and_renders_in_chromium(run_dir, tmp_path):
    out = tmp_path / "compare"
    first = run_dir / "checkpoints" / "epoch_001.safetensors"
    code = main(["explore", "--run", str(run_dir), "--checkpoint", str(first), "--compare",
                 str(run_dir / "best.safetensors"), "--every", "2", "--samples", "8", "--probe-samples", "0",
                 "--dependency-samples", "2", "--show", "2", "--attribution-samples", "1", "--ig-steps", "4",
                 "--out", str(out), "--device", "cpu"])
    assert code in (0, None)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert re.findall(r"<h2>(.*?)</h2>", html) == list(COMPARE_TITLES)  # --run adds "Over training"
    assert_self_contained(html)
    summary = json.loads((out / "explore.json").read_text())
    marks = summary["over_training"]["marks"]
    assert marks["A"] == 1 and marks["B"] in summary["over_training"]["epochs"]  # best is one of the epochs
    assert f"with A at epoch 1 and B at epoch {marks['B']} marked on it" in html
    assert summary["attributions"]["samples"] == {"gradient": 2, "ig": 1}
    correlations = summary["attributions"]["rank_correlation_a_vs_b"]["input gradient"]
    assert all(v is None or -1 <= v <= 1 for v in correlations.values())
    assert len(summary["probes"]["pixel_pck"]["a"]) == len(summary["probes"]["stages"])
    assert len(summary["worst"]["a"]) == len(summary["worst"]["b"]) == 8
    # the third edition's instruments, side by side: each model's stacks scored as its PCK, its fields measured
    for label in ("a", "b"):
        assert summary["stacks"][label]["pck"] == [pytest.approx(summary["pck"][label])]
        assert summary["receptive_fields"][label]["names"][:17] == list(KEYPOINT_NAMES)
        assert summary["receptive_fields"][label]["samples"] == 8
    assert "A has one hourglass" in html and "B has one hourglass" in html
    assert "A&#x27;s joints draw 90% of their input gradient" in html or "A's joints draw 90%" in html
    if BROWSER is None:
        pytest.skip("no headless Chromium installed (apt-get install chromium)")
    assert_renders(out / "index.html", list(COMPARE_TITLES), tmp_path)


def test_compare_says_what_the_run_has_to_do_with_the_two_models():
    assert "neither A nor B" in _run_sentence("RUN", {})
    assert _run_sentence("RUN", {"A": 1}).endswith("with A at epoch 1 marked on it (B is not one of its epoch "
                                                   "checkpoints).")
    assert _run_sentence("RUN", {"A": 1, "B": 3}).endswith("with A at epoch 1 and B at epoch 3 marked on it.")


def test_compare_names_a_joint_whose_reach_differs_only_beyond_both_intervals():
    from hgpose.explore.compare_instruments import erf_finding
    from hgpose.explore.receptive_field import ReceptiveFields

    def fields(wrist_rings):
        profiles = np.zeros((6, 17, 20))
        profiles[:, :, 4] = 1.0  # every joint's mass at radius 4
        profiles[:, 9] = 0
        profiles[np.arange(6), 9, wrist_rings] = 1.0  # the left wrist's at one radius per sample
        return ReceptiveFields(list(KEYPOINT_NAMES), np.zeros((17, 3, 3)), profiles, np.full(17, 64.0), 64)

    apart = erf_finding({"A": fields([4] * 6), "B": fields([12] * 6)})
    assert "the left_wrist differs most (A 4 px, 4-4; B 12 px, 12-12), beyond both intervals." in apart
    assert "A's joints draw 90% of their input gradient from within 4-4 px; B's joints" in apart
    # the wrist's reach spread over samples: B's 90% radius is one more than A's, inside both intervals
    overlapping = erf_finding({"A": fields([4, 6, 8, 10, 12, 14]), "B": fields([5, 7, 9, 11, 13, 15])})
    assert "the left_wrist differs most" in overlapping and "no joint's reach is shown to differ" in overlapping
