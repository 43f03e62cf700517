"""The Gradio app on 127.0.0.1, driven with gradio_client as a user's browser would drive it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from factories import fake_hf_api, png_bomb, write_dicom
from PIL import Image

from spine_hf.cli import main
from spine_hf.data.imaging import decode_image


@pytest.fixture
def three_formats(tmp_path, phantom_split):
    pixels = np.asarray(decode_image(next((phantom_split / "test").rglob("*.png"))))
    png, png16 = tmp_path / "a.png", tmp_path / "a16.png"
    Image.fromarray(pixels).save(png)
    Image.fromarray(pixels.astype(np.uint16) * 257).save(png16)
    dcm = write_dicom(tmp_path / "a.dcm", np.round(pixels / 255 * 4095).astype(np.uint16), BitsStored=12)
    return [png, png16, dcm]


def test_app_grades_png_16bit_png_and_dicom_like_predict(running_app, trained_model, three_formats, capsys):
    from gradio_client import Client, handle_file

    client = Client(running_app, verbose=False)
    assert main(["predict", "--model", str(trained_model), *map(str, three_formats)]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    for path, cli in zip(three_formats, expected, strict=True):
        headline, label, _image = client.predict(handle_file(str(path)), True, str(trained_model), api_name="/grade")
        scores = {c["label"]: c["confidence"] for c in label["confidences"]}
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
        ours = [
            scores[f"{i} {name}"] for i, name in enumerate(["Healthy", "Doubtful", "Minimal", "Moderate", "Severe"])
        ]
        np.testing.assert_allclose(ours, cli["probabilities"], atol=1e-4)
        assert f"Grade {cli['grade']} — {cli['grade_name']}" in headline


def test_app_shows_the_grade_range_and_refers_a_noise_frame(running_app, trusted_model, phantom_split, tmp_path):
    from gradio_client import Client, handle_file

    from spine_hf.predict.inference import Predictor

    client = Client(running_app, verbose=False)
    predictor = Predictor(trusted_model)
    phantom = next(
        p for p in sorted((phantom_split / "test").rglob("*.png")) if predictor.predict([p])[0].in_distribution
    )
    expected = predictor.predict([phantom])[0]
    headline, _label, _image = client.predict(handle_file(str(phantom)), False, str(trusted_model), api_name="/grade")
    low, high = expected.grade_range
    assert headline.startswith(f"## Grade {expected.grade} — {expected.grade_name}")
    assert f"80% range: {low}-{high}" in headline if low < high else f"80% range: {low} (" in headline
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(noise)
    headline, label, _image = client.predict(handle_file(str(noise)), True, str(trusted_model), api_name="/grade")
    assert headline.startswith("## Not graded: this image does not look like the radiographs the model was trained on")
    assert "Do not use its grade" in headline and "Grade " not in headline.split("\n")[0]
    assert not (label or {}).get("confidences")  # no grade probabilities presented as a result


def test_app_grades_with_an_onnx_export_and_shows_the_image_plain(running_app, trusted_model, exported_model,
                                                                  phantom_split):  # fmt: skip
    """The model box takes an exported folder: the same headline as the PyTorch folder's; Grad-CAM (which needs
    the weights) is skipped with a warning instead of failing the request."""
    from gradio_client import Client, handle_file

    client = Client(running_app, verbose=False)
    phantom = handle_file(str(sorted((phantom_split / "test").rglob("*.png"))[0]))
    headline, label, image = client.predict(phantom, True, str(exported_model), api_name="/grade")
    torch_headline, torch_label, _ = client.predict(phantom, False, str(trusted_model), api_name="/grade")
    assert headline == torch_headline and image
    ours = {entry["label"]: entry["confidence"] for entry in (label or {}).get("confidences", [])}
    theirs = {entry["label"]: entry["confidence"] for entry in (torch_label or {}).get("confidences", [])}
    assert ours.keys() == theirs.keys() and all(abs(ours[k] - theirs[k]) < 1e-4 for k in ours)


def test_app_shows_loading_and_decoding_errors_instead_of_crashing(running_app, trained_model, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(running_app, verbose=False)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(Exception, match="text file"):
        client.predict(handle_file(str(text)), False, str(trained_model), api_name="/grade")
    with pytest.raises(Exception, match="No model given"):
        client.predict(handle_file(str(text)), False, "", api_name="/grade")
    png = tmp_path / "ok.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(png)
    with pytest.raises(Exception, match="Could not load the model"):
        client.predict(handle_file(str(png)), False, str(tmp_path / "no-model"), api_name="/grade")


def test_publish_tab_dry_run_and_push_keep_the_token_secret(running_app, trained_model, monkeypatch, caplog, capfd):
    import huggingface_hub
    from gradio_client import Client

    token = "hf_PLANTED_app_token_987"
    fake_api, calls = fake_hf_api()
    monkeypatch.setattr(huggingface_hub, "HfApi", fake_api)
    caplog.set_level("DEBUG")
    client = Client(running_app, verbose=False)
    preview = client.predict(str(trained_model), "me/grader", True, api_name="/preview")
    for name in ("config.json", "model.safetensors", "README.md"):
        assert name in preview
    assert calls == []  # a dry run calls nothing
    done = client.predict(str(trained_model), "me/grader", True, token, api_name="/push")
    assert "Uploaded" in done
    assert calls[0] == ("init", token)  # the token reaches the Hub client as an argument, and only there
    assert calls[1][1] == "me/grader" and calls[1][2]["private"] is True
    captured = capfd.readouterr()
    assert token not in captured.out + captured.err + caplog.text + preview + done


def test_importing_app_starts_nothing():
    import subprocess
    import sys

    from conftest import REPO

    code = "import app; print('ok')"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok" and "Running on" not in run.stdout + run.stderr


@pytest.mark.slow
def test_fifty_concurrent_requests_are_all_answered_correctly(running_app, trained_model, three_formats):
    """50 threads, each its own gradio_client, all at once; every result image is downloaded and complete.

    (Identical requests give identical result images: with PIL outputs, Gradio rewrote the shared
    cache file in place while others streamed it, and some downloads were cut short.)"""
    import resource
    import threading
    import time

    from gradio_client import Client, handle_file

    from spine_hf.predict.inference import Predictor

    expected = Predictor(trained_model).predict([three_formats[0]])[0]
    names = ["Healthy", "Doubtful", "Minimal", "Moderate", "Severe"]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results, failures = [], []
    go = threading.Barrier(50)

    def one_user() -> None:
        try:
            client = Client(running_app, verbose=False)
            go.wait(timeout=120)  # every request leaves at the same moment
            start = time.perf_counter()
            _headline, label, image = client.predict(
                handle_file(str(three_formats[0])), True, str(trained_model), api_name="/grade"
            )
            seconds = time.perf_counter() - start
            with Image.open(image) as shown:
                shown.load()  # a truncated download fails here
            scores = {c["label"]: c["confidence"] for c in label["confidences"]}
            results.append((seconds, [scores[f"{i} {n}"] for i, n in enumerate(names)]))
        except Exception as err:  # collected, so that one failure does not hide the others
            failures.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=one_user) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert failures == [] and len(results) == 50
    latencies = sorted(seconds for seconds, _ in results)
    for _, probabilities in results:
        np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-4)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    print(f"50 concurrent users: p50 {latencies[24]:.2f} s, p95 {latencies[47]:.2f} s, max {latencies[-1]:.2f} s, "
          f"peak RSS grew {grown_mb:.0f} MB")  # fmt: skip
    assert grown_mb < 1024


def test_app_refuses_a_decompression_bomb_with_a_message(running_app, trained_model, tmp_path):
    from gradio_client import Client, handle_file

    bomb = tmp_path / "bomb.png"  # claims 20000 x 20000 pixels in a few bytes
    bomb.write_bytes(png_bomb())
    client = Client(running_app, verbose=False, download_files=False)
    with pytest.raises(Exception, match="too large"):
        client.predict(handle_file(str(bomb)), False, str(trained_model), api_name="/grade")
