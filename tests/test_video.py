"""Video probes end to end: the generated ``video_needle`` family, the video JSONL reader (frame folders and
real video files written here with OpenCV), video prompts through the processors, RAM and every
intervention on video prompts, and ``core-eval score`` on video probes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oracles
from core_eval.adapters import adapter_for
from core_eval.adapters.regions import batch_video_rects, sample_region_masks
from core_eval.cli import main as cli_main
from core_eval.intervene import apply_intervention
from core_eval.probes import (
    ProbeArgumentError, ProbeDataError, ProbeSample, Video, generate, load_probe, probe_set_hash, to_hf_dataset,
)
from core_eval.probes.draw import BACKGROUND, PALETTE
from core_eval.probes.readers.video import read_video_jsonl
from core_eval.prompting import encode, encode_teacher_forced, messages_for, video_kwargs
from core_eval.scoring.capture import RamCapture
from core_eval.scoring.ram import ScoreConfig, score_batch
from core_eval.spec import load_head_spec
from core_eval.testing import VLM_FAMILIES, synthetic_image
from core_eval.testing.tiny_models import recipes

REPO = Path(__file__).resolve().parents[1]
VIDEO_FAMILIES = tuple(f for f in VLM_FAMILIES if recipes()[f][0].region.video_rects is not None)
NEEDLE = dict(n_frames=6, width=112, height=84)


def frame(k: int, size=(64, 48)) -> Image.Image:
    """A distinct deterministic frame: noise seeded by ``k``."""
    rng = np.random.default_rng(k)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_folder(folder: Path, n: int, size=(64, 48)) -> list[Image.Image]:
    folder.mkdir(parents=True)
    frames = [frame(k, size) for k in range(n)]
    for k, im in enumerate(frames):  # natural order must beat string order: 2.png before 10.png
        im.save(folder / f"{k}.png")
    return frames


def write_video(path: Path, frames: list[Image.Image], fps: float, codec: str = "FFV1") -> Path:
    cv2 = pytest.importorskip("cv2")
    w, h = frames[0].size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {codec} here"
    for im in frames:
        writer.write(cv2.cvtColor(np.asarray(im), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


# --------------------------------------------------------------------------- video_needle
def test_video_needle_is_deterministic_and_its_tube_holds_the_needle():
    a, b = generate("video_needle", 6, seed=3), generate("video_needle", 6, seed=3)
    assert probe_set_hash(a) == probe_set_hash(b) != probe_set_hash(generate("video_needle", 6, seed=4))
    assert [s.id for s in generate("video_needle", 3, seed=3)] == [s.id for s in a[:3]]
    for s in a:
        (video,) = s.videos
        assert s.images == [] and len(video.frames) == 8 and video.size == (112, 84) and video.fps == 2.0
        first, last = s.meta["segment"]
        assert [bx.frame for bx in s.boxes] == list(range(first, last + 1))
        colour = PALETTE[s.answer]
        for k, im in enumerate(video.frames):
            px = np.asarray(im)
            hit = (px == colour).all(-1)  # the needle's colour is unique in the video
            boxes = [bx for bx in s.boxes if bx.frame == k]
            if not boxes:
                assert not hit.any(), (s.id, k)
                continue
            (bx,) = boxes
            ys, xs = hit.nonzero()
            assert len(xs) > 0 and xs.min() >= bx.x0 and xs.max() < bx.x1 and ys.min() >= bx.y0 and ys.max() < bx.y1
        # the distractors stand still: frames differ only inside the needle's boxes
        still = np.ones((84, 112), dtype=bool)
        for bx in s.boxes:
            still[int(bx.y0):int(bx.y1), int(bx.x0):int(bx.x1)] = False
        ref = np.asarray(video.frames[0])
        for im in video.frames:
            assert np.array_equal(np.asarray(im)[still], ref[still])
        assert (ref[still] != BACKGROUND).any(-1).any()  # there are distractors


def test_video_needle_knobs():
    s = generate("video_needle", 4, seed=0, ask="shape", moving=False, n_frames=5, min_len=5, max_len=5)
    for x in s:
        assert x.answer in x.meta["needle"] and len({tuple(b.as_list()) for b in x.boxes}) == 1
        assert [b.frame for b in x.boxes] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="knob max_len must be an int in \\[3, 4\\]"):
        generate("video_needle", 1, n_frames=4, min_len=3, max_len=5)
    with pytest.raises(ProbeArgumentError, match="unknown knob\\(s\\) \\['frames'\\]"):
        generate("video_needle", 1, frames=3)


def test_lm_eval_datasets_refuse_video():
    with pytest.raises(ProbeArgumentError, match="lm-eval cannot take.*core-eval score"):
        to_hf_dataset(generate("video_needle", 1))


# --------------------------------------------------------------------------- the reader: frame folders
def test_frame_folder_rows_sample_frames_and_map_boxes(tmp_path):
    src = write_folder(tmp_path / "clip", 12)
    rows = write_rows(tmp_path / "rows.jsonl", [
        {"id": "sec", "video": "clip", "fps": 4, "segment": [1.0, 2.0], "boxes": {"4": [1, 2, 30, 40], "6": [0, 0, 8, 8]},
         "question": "What is it?", "answer": "a cup"},
        {"id": "frm", "video": "clip", "fps": 4, "frames": [2, 3], "boxes": {"2": [5, 5, 10, 20]}, "bbox_format": "xywh",
         "question": "Where?", "answer": "left", "sample_fps": 2},
        {"id": "all", "video": "clip", "fps": 4, "clip": [0.5, 3.0], "boxes": {}, "question": "Q?", "answer": 3,
         "max_frames": 3, "meta": {"source": "mine"}},
    ])
    sec, frm, whole = read_video_jsonl(rows)
    # every frame kept (no sample_fps): the segment [1, 2) s is source frames 4..7
    v = sec.videos[0]
    assert len(v.frames) == 12 and v.fps == 4 and v.start == 0
    assert [(b.frame, b.as_list()) for b in sec.boxes] == [(4, [1, 2, 30, 40]), (6, [0, 0, 8, 8])]
    assert sec.meta["video"]["frames_without_box"] == [5, 7] and sec.meta["video"]["segment_frames"] == [4, 7]
    assert all(same_pixels(a, b) for a, b in zip(v.frames, src))
    # sample_fps 2 of a 4 fps folder: stride 2, kept 0, 2, 4, ...; xywh box -> xyxy; frame 2 is kept frame 1
    v = frm.videos[0]
    assert frm.meta["video"]["frame_indices"] == [0, 2, 4, 6, 8, 10] and v.fps == 2 and len(v.frames) == 6
    assert [(b.frame, b.as_list()) for b in frm.boxes] == [(1, [5, 5, 15, 25])]
    assert same_pixels(v.frames[1], src[2])
    # clip [0.5, 3) = frames 2..11; max_frames 3 -> stride ceil(10 / 3) = 4 -> 2, 6, 10; {} = whole frames
    v = whole.videos[0]
    assert whole.meta["video"]["frame_indices"] == [2, 6, 10] and v.fps == 1 and v.start == 0.5
    assert [(b.frame, b.as_list()) for b in whole.boxes] == [(k, [0, 0, 64, 48]) for k in range(3)]
    assert whole.meta["source"] == "mine" and whole.answer == "3" and whole.family == "video"
    assert probe_set_hash([sec, frm, whole]) == probe_set_hash(read_video_jsonl(rows))
    # the reader-level sampling, and --probes video:<rows> with the same knobs
    lowered = read_video_jsonl(rows, sample_fps=1.0)
    assert lowered[0].meta["video"]["frame_indices"] == [0, 4, 8]
    via = load_probe(f"video:{rows}", sample_fps=1.0)
    assert probe_set_hash(via) == probe_set_hash(lowered)
    with pytest.raises(ProbeArgumentError, match="unknown option\\(s\\) \\['fps'\\]; valid options: max_frames"):
        load_probe(f"video:{rows}", fps=1)


# --------------------------------------------------------------------------- the reader: real video files
@pytest.mark.parametrize("backend", ["decord", "opencv"])
def test_video_file_rows_decode_the_frames_written(tmp_path, backend):
    pytest.importorskip("decord" if backend == "decord" else "cv2")
    frames = [frame(k) for k in range(10)]
    write_video(tmp_path / "clip.mkv", frames, fps=5.0)  # FFV1: lossless
    rows = write_rows(tmp_path / "rows.jsonl", [
        {"id": "f", "video": "clip.mkv", "segment": [0.4, 1.0], "boxes": {"2": [0, 0, 10, 10], "4": [3, 3, 9, 9]},
         "question": "Q?", "answer": "A"},
    ])
    (s,) = read_video_jsonl(rows, sample_fps=2.5, video_backend=backend)
    v = s.videos[0]
    assert s.meta["video"]["source_fps"] == 5.0 and s.meta["video"]["source_frames"] == 10
    assert s.meta["video"]["frame_indices"] == [0, 2, 4, 6, 8] and v.fps == 2.5 and v.size == (64, 48)
    assert [(b.frame, b.as_list()) for b in s.boxes] == [(1, [0, 0, 10, 10]), (2, [3, 3, 9, 9])]
    assert s.meta["video"]["boxes_not_sampled"] == 0
    assert all(same_pixels(v.frames[j], frames[i]) for j, i in enumerate([0, 2, 4, 6, 8]))


def test_lossy_video_file_keeps_frame_count_and_order(tmp_path):
    frames = [Image.new("RGB", (64, 48), (20 * k, 255 - 20 * k, 128)) for k in range(8)]
    write_video(tmp_path / "clip.mp4", frames, fps=4.0, codec="mp4v")
    (s,) = read_video_jsonl(write_rows(tmp_path / "r.jsonl", [
        {"video": "clip.mp4", "boxes": {}, "question": "Q?", "answer": "A"}]))
    got = [np.asarray(f).astype(int).mean((0, 1)) for f in s.videos[0].frames]
    want = [np.asarray(f).astype(int).mean((0, 1)) for f in frames]
    assert len(got) == 8 and max(np.abs(g - w).max() for g, w in zip(got, want)) < 8


# --------------------------------------------------------------------------- the reader: malformed rows
def test_malformed_rows_are_all_listed_with_the_fix(tmp_path):
    write_folder(tmp_path / "clip", 8)  # 8 frames; at fps 4: 2 s
    good = {"video": "clip", "fps": 4, "boxes": {"1": [0, 0, 8, 8]}, "question": "Q?", "answer": "A"}
    lines = [
        {**good, "id": "ok"},                                                    # 1 ok
        {**good, "id": "oob", "boxes": {"9": [0, 0, 8, 8]}},                      # 2 frame out of range
        {**good, "id": "seg", "segment": [1.5, 3.0]},                             # 3 segment outside the video
        {**good, "id": "empty", "boxes": {"1": [10, 0, 5, 8]}},                   # 4 empty box
        {**good, "id": "out", "boxes": {"1": [0, 0, 80, 8]}},                     # 5 box outside the frame
        {**good, "id": "notin", "frames": [3, 5]},                                # 6 box frame outside the segment
        {**good, "id": "badfps", "fps": "x"},                                     # 7 bad fps
        {k: v for k, v in good.items() if k != "boxes"} | {"id": "nobox"},        # 8 boxes missing
        {**good, "id": "extra", "colour": "red"},                                 # 9 unknown key
        {**good, "id": "ok"},                                                     # 10 duplicate id
        {**good, "id": "gone", "video": "nowhere.mp4"},                           # 11 missing video
        '{"video": "clip", ',                                                     # 12 malformed JSON
        {**good, "id": "short", "frames": [1, 1], "sample_fps": 1},               # 13 segment between kept frames
        {k: v for k, v in good.items() if k != "fps"} | {"id": "folder"},        # 14 a folder needs fps
    ]
    bad = write_rows(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ProbeDataError) as e:
        read_video_jsonl(bad)
    msg = str(e.value)
    assert {ln for ln, _ in e.value.errors} == set(range(2, 15)), msg
    for pattern in (
        r"line 2: boxes\['9'\]: frame 9 out of range \(the video has 8 frames at 4 fps: frames 0..7",
        r"line 3: 'segment' \[1.5, 3.0\] lies outside the video .*use 0 <= start < end <= 2",
        r"line 4: boxes\['1'\]: empty box \[10, 0, 5, 8\]: x1 \(5\) <= x0 \(10\)",
        r"line 5: boxes\['1'\]: box \[0, 0, 80, 8\] \(xyxy\) outside the image bounds \(image size 64x48\)",
        r"line 6: boxes\['1'\]: frame 1 is outside the target segment \(frames 3..5\); drop the box or widen",
        r"line 7: 'fps' must be a number > 0",
        r"line 8: missing field 'boxes' \(use \{\} for the whole frames of the segment\)",
        r"line 9: unknown key\(s\) \['colour'\]; known keys: .*put your own fields under 'meta'",
        r"line 10: duplicate id 'ok' \(first at line 1\)",
        r"line 11: 'video' not found: 'nowhere.mp4'",
        r"line 12: malformed JSON",
        r"line 13: no kept frame lies in the target segment \(frames 1..1\) with a stride of 4 source frames; raise",
        r"line 14: 'fps' is required for a folder of frames",
    ):
        assert re.search(pattern, msg), (pattern, msg)


def test_bad_video_rows_fail_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import core_eval.loading

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the video rows were validated")

    monkeypatch.setattr(core_eval.loading, "load", no_load)
    write_folder(tmp_path / "clip", 4)
    bad = write_rows(tmp_path / "bad.jsonl", [{"video": "clip", "fps": 2, "frames": [2, 6], "boxes": {},
                                                "question": "Q?", "answer": "A"}])
    rc = cli_main(["score", "--model", str(tmp_path / "no_such_model"), "--probes", f"video:{bad}",
                   "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert rc != 0 and re.search(r"line 1: 'frames' \[2, 6\] lies outside the video .*first <= last <= 3", err), err
    assert "no_such_model" not in err and not (tmp_path / "s.json").exists()


def test_a_family_without_video_fails_before_the_model_loads(tiny_dir, tmp_path, capsys, monkeypatch):
    import core_eval.loading

    monkeypatch.setattr(core_eval.loading, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    rc = cli_main(["score", "--model", str(tiny_dir("llava")), "--probes", "video_needle", "--n", "2",
                   "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert rc != 0 and "family 'llava' has no video-to-token mapping" in err and "qwen2_vl" in err, err


# --------------------------------------------------------------------------- prompts
def test_image_prompts_are_unchanged_and_videos_are_not_resampled(tiny_loaded):
    _, p, _ = tiny_loaded("qwen2_vl")
    image_sample = generate("grid_needle", 1, grid=3, image_size=96)[0]
    assert video_kwargs(p, [image_sample]) == {}
    assert messages_for(image_sample) == [{"role": "user", "content": [{"type": "image"},
                                                                       {"type": "text", "text": image_sample.question}]}]
    s = generate("video_needle", 1, **NEEDLE)[0]
    kw = video_kwargs(p, [s])
    assert kw["do_sample_frames"] is False and len(kw["videos"][0]) == 6
    assert messages_for(s)[0]["content"][0] == {"type": "video"}
    inputs = encode(p, [s])
    assert inputs["video_grid_thw"][0, 0].item() == 3  # 6 frames, 2 per temporal patch: none dropped


@pytest.mark.parametrize("family", ["llava_onevision", "internvl"])
def test_processors_that_stack_videos_say_so(tiny_loaded, family):
    """LLaVA-OneVision and InternVL stack a batch's videos: unequal frame counts get the fix, not a torch error."""
    _, p, _ = tiny_loaded(family)
    a, b = (ProbeSample(id=i, images=[], videos=[Video([synthetic_image(k) for k in range(n)])], question="q", answer="a")
            for i, n in (("a", 4), ("b", 6)))
    with pytest.raises(ValueError, match="stacks the videos of a batch, and the batch's videos have \\[4, 6\\] frames: "
                                         "score with --batch-size 1"):
        encode(p, [a, b])
    encode(p, [a]), encode(p, [b])


def test_processors_see_the_frame_times(tiny_loaded):
    """Qwen3-VL writes ``<t seconds>`` per temporal patch (the mean time of its two frames), Qwen2.5-VL
    derives ``second_per_grid_ts`` and GLM writes integer seconds, all from the Video's fps and start."""
    video = Video([synthetic_image(k) for k in range(6)], fps=2.0, start=10.0)
    s = ProbeSample(id="t", images=[], videos=[video], question="When?", answer="x")
    _, p3, _ = tiny_loaded("qwen3_vl")
    text = p3.tokenizer.decode(encode(p3, [s])["input_ids"][0])
    assert re.findall(r"<([\d.]+) seconds>", text) == [f"{10 + (2 * t + 0.5) / 2:.1f}" for t in range(3)]
    _, p25, _ = tiny_loaded("qwen2_5_vl")
    assert encode(p25, [s])["second_per_grid_ts"].tolist() == [1.0]  # 2 frames per patch at 2 fps
    _, pg, _ = tiny_loaded("glm4v")
    text = pg.tokenizer.decode(encode(pg, [s])["input_ids"][0])
    assert re.findall(r"<\|end_of_image\|>(\d+)", text) == ["10", "11", "12"]


# --------------------------------------------------------------------------- RAM and interventions on video
@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_ram_on_video_prompts_matches_eager_attention(tiny_sdpa_eager, family):
    """score_batch on video_needle: its RAM / visual mass equal eager attention (output_attentions) summed
    over the tube's tokens / all video tokens, on the gold answer's query rows."""
    _, model, eager, p = tiny_sdpa_eager(family)
    samples = generate("video_needle", 2, seed=5, **NEEDLE)
    samples[1].answer = samples[1].answer + " " + samples[1].answer  # different lengths: padding
    cfg = ScoreConfig(probes="video_needle", n=2, batch_size=2)
    with RamCapture(model) as cap:
        got = score_batch(model, p, samples, cfg, cap)
    inputs, amask, _ = encode_teacher_forced(p, samples)
    masks = sample_region_masks(p, inputs, samples)
    video = batch_video_rects(p, inputs, [s.videos for s in samples]).video >= 0
    assert torch.equal(masks.visual, video) and (masks.target & ~video).sum() == 0
    assert all(0 < int(masks.target[b].sum()) < int(video[b].sum()) for b in range(2))
    with torch.no_grad():
        att = eager(**inputs, output_attentions=True).attentions
    for b in range(2):
        rows = amask[b].nonzero().flatten() - 1
        for layer, A in enumerate(att):
            P = A[b][:, rows].double()  # (H, R, T)
            want_r = (P * masks.target[b]).sum(-1).mean(-1).float()
            want_v = (P * video[b]).sum(-1).mean(-1).float()
            torch.testing.assert_close(got["ram"][b, layer], want_r, atol=1e-5, rtol=0)
            torch.testing.assert_close(got["visual_mass"][b, layer], want_v, atol=1e-5, rtol=0)
    assert got["region_frac"].tolist() == pytest.approx((masks.target.sum(1) / video.sum(1)).tolist())


def _oracle(model, inputs, heads, mode, visual):
    oracles.ORACLE_HEADS.clear()
    for layer, h in heads:
        oracles.ORACLE_HEADS.setdefault(layer, {})[h] = mode
    oracles.ORACLE_STATE["visual"] = visual
    ad = adapter_for(model)
    ad.set_lm_attention(oracles.ORACLE_NAME)
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        ad.set_lm_attention("sdpa")
        oracles.ORACLE_HEADS.clear()


def _video_inputs(p, seed=0):
    samples = generate("video_needle", 2, seed=seed, **NEEDLE)
    samples[1].question += " Think about it."
    inputs = encode(p, samples)
    return samples, inputs, batch_video_rects(p, inputs, [s.videos for s in samples]).video >= 0


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_interventions_on_video_prompts(tiny_loaded, family):
    """Every variant runs on video prompts; an empty set is bit-identical; ``uniform`` / ``visual_knockout``
    equal eager attention with an explicit mask whose visual keys are the video tokens; ``text_only`` hybrid
    sparse attention equals its explicit-mask oracle; knocking out every head makes the answer logits
    independent of the video."""
    model, p, _ = tiny_loaded(family)
    samples, inputs, video = _video_inputs(p)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        dense = model(**inputs).logits
    for mode in ("zero", "uniform", "visual_knockout"):
        iv = apply_intervention(model, [], mode)
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, dense), mode
        iv.remove()
    heads = [(0, 0), (1, 3), (2, 1)]
    for mode in ("uniform", "visual_knockout"):
        iv = apply_intervention(model, heads, mode)
        try:
            with torch.no_grad():
                got = model(**inputs).logits
        finally:
            iv.remove()
        want = _oracle(model, inputs, heads, mode, video)
        torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
        assert (got[real] - dense[real]).abs().max() > 1e-5  # it bit
    # text_only hybrid: sparse heads see no video token beyond sinks / window
    from test_sparse import FULL, SINK, WINDOW, oracle_logits as hybrid_oracle

    iv = apply_intervention(model, FULL, "text_only", sink=SINK, window=WINDOW, block=16)
    try:
        with torch.no_grad():
            got = model(**inputs).logits
    finally:
        full_kv = iv.variant.full_kv
        iv.remove()
    want = hybrid_oracle(model, inputs, full_kv, "text_only", inputs["input_ids"])
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
    # every head knocked out: the last prompt position no longer depends on the video
    _, other, _ = _video_inputs(p, seed=9)
    assert other["input_ids"].shape == inputs["input_ids"].shape
    s = adapter_for(model).shape
    every = [(layer, h) for layer in range(s.num_layers) for h in range(s.num_heads)]
    iv = apply_intervention(model, every, "visual_knockout")
    try:
        with torch.no_grad():
            a, b = model(**inputs).logits[:, -1], model(**{**other, "input_ids": inputs["input_ids"]}).logits[:, -1]
    finally:
        iv.remove()
    with torch.no_grad():
        a0, b0 = model(**inputs).logits[:, -1], model(**{**other, "input_ids": inputs["input_ids"]}).logits[:, -1]
    assert (a0 - b0).abs().max() > 1e-6  # the video matters without the knockout
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- core-eval score end to end
def _cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_core_eval_score_on_video_probes(tiny_dir, tmp_path):
    """``core-eval score`` on the generated family and on video rows (a frame folder and a video file)."""
    model = tiny_dir("qwen2_vl")
    out = tmp_path / "needle.json"
    cmd = [sys.executable, "-m", "core_eval.cli", "score", "--model", str(model), "--probes", "video_needle",
           "--knobs", json.dumps(NEEDLE), "--n", "4", "--batch-size", "2", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_cli_env(), cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    spec = load_head_spec(out)
    assert spec.scorer["probes"] == "video_needle" and spec.scorer["n_used"] == 4
    assert spec.scorer["probe_hash"] == probe_set_hash(generate("video_needle", 4, **NEEDLE))
    ram = np.asarray(spec.scores["ram"])
    assert ram.shape == (3, 4) and (ram > 0).all() and (ram < np.asarray(spec.scores["visual_mass"]) + 1e-6).all()

    frames = [frame(k, (112, 84)) for k in range(8)]
    (tmp_path / "clip").mkdir()
    for k, im in enumerate(frames):
        im.save(tmp_path / "clip" / f"{k:03d}.jpg", quality=95)
    write_video(tmp_path / "clip.mkv", frames, fps=4.0)
    rows = write_rows(tmp_path / "rows.jsonl", [
        {"id": "a", "video": "clip", "fps": 4, "segment": [0.5, 1.5], "boxes": {"2": [0, 0, 56, 42], "4": [56, 42, 112, 84]},
         "question": "What is in the box?", "answer": "noise"},
        {"id": "b", "video": "clip.mkv", "frames": [1, 6], "boxes": {}, "question": "What is it?", "answer": "noise"},
    ])
    out = tmp_path / "rows.json"
    cmd = [sys.executable, "-m", "core_eval.cli", "score", "--model", str(model), "--probes", f"video:{rows}",
           "--knobs", '{"sample_fps": 2}', "--n", "2", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_cli_env(), cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    spec = load_head_spec(out)
    assert spec.scorer["n_used"] == 2 and spec.scorer["knobs"] == {"sample_fps": 2}
    assert spec.scorer["probe_hash"] == probe_set_hash(read_video_jsonl(rows, sample_fps=2))
