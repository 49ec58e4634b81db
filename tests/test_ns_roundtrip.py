"""The nerfstudio round trip of both methods' outputs (issue 17): ns-export gaussian-splat, ns-render camera-path,
ns-eval, ns-viewer, and seeded reproduction, all on CPU.

Data: one procedural scene of 12 frames at 32x32 px (3 input views, 9 held out). Each method trains 20 steps with
`ns-train` from 300 points (itergen twice with the same seed); the SH degree rises every 3 steps, so the higher SH bands are
trained and exported too (full degree 3 from step 9). `itergen` uses the `tiny` generator with random weights
(2 sampler steps, a clip every 5 steps). Torch runs single-threaded in every process (shared 2-core machine; it
also fixes float reduction order).

Every `ns-*` process spends most of its time importing nerfstudio (10-30 s on a busy machine), so the tool runs
are independent jobs run two at a time: the three trainings, then for both methods ns-export, ns-render and a
session with ns-viewer. ns-eval runs in this process through its console-script entry point (the same function).

System libraries: `ns-export` imports open3d, which needs libusb-1.0 (Debian/Ubuntu package `libusb-1.0-0`);
`ns-render camera-path` needs an `ffmpeg` on PATH: the system one, else the binary of the pip package
imageio-ffmpeg (a dependency of this project) is put on PATH. Tests that need what is absent skip and say why.
"""

from __future__ import annotations

import ctypes
import inspect
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_scenes

FRAMES, SIZE, VIEWS, POINTS, STEPS, SEED = 12, 32, 3, 300, 20, 5
METHODS = ("itergen-splatfacto", "itergen")
REPEATED = "itergen"  # trained twice with the same seed (the baseline's seeding is the same nerfstudio code path)
PARALLEL = 2  # tool processes at a time
BIN = Path(sys.executable).parent
LIBUSB_MISSING = (
    "libusb-1.0 is missing: ns-export imports open3d, which needs libusb-1.0.so.0 "
    "(Debian/Ubuntu: apt-get install libusb-1.0-0)"
)
FFMPEG_MISSING = "no ffmpeg: ns-render camera-path needs one (apt-get install ffmpeg, or pip install imageio-ffmpeg)"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def libusb_available() -> bool:
    try:
        ctypes.CDLL("libusb-1.0.so.0")
    except OSError:
        return False
    return True


def ffmpeg_exe() -> str | None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        try:
            import imageio_ffmpeg

            exe = imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError):
            return None
    return exe


def cli_env(extra_path: Path | None = None) -> dict:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", COLUMNS="200",
        HF_HUB_OFFLINE="1",
    )  # fmt: skip
    if extra_path is not None:
        env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_cli(args, timeout: float = 400, extra_path: Path | None = None) -> dict:
    start = time.monotonic()
    proc = subprocess.run(
        [str(a) for a in args], env=cli_env(extra_path), capture_output=True, text=True, timeout=timeout
    )
    return {"rc": proc.returncode, "log": (proc.stdout + proc.stderr)[-4000:], "seconds": time.monotonic() - start}


def run_jobs(jobs: dict) -> dict:
    """Run the callables of ``jobs`` (name -> callable) PARALLEL at a time; name -> result."""
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def ns_train_args(method: str, scene: Path, out: Path) -> list:
    extra = []
    if method == "itergen":
        extra = ["--pipeline.generator.random-init", "True", "--pipeline.generator.num-inference-steps", 2,
                 "--pipeline.generation.generate-every", 5]  # fmt: skip
    return [BIN / "ns-train", method, "--data", scene, "--output-dir", out, "--experiment-name", "rt",
            "--timestamp", "run", "--machine.device-type", "cpu", "--machine.seed", SEED,
            "--max-num-iterations", STEPS, "--vis", "tensorboard", "--viewer.quit-on-train-completion", "True",
            "--logging.local-writer.enable", "False", "--steps-per-eval-image", 1000, "--steps-per-eval-batch", 0,
            "--pipeline.datamanager.num-input-views", VIEWS, "--pipeline.datamanager.init-num-points", POINTS,
            "--pipeline.model.sh-degree-interval", 3, *extra]  # fmt: skip


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@torch.no_grad()
def render(pipeline, cameras) -> torch.Tensor:
    """[N, H, W, 3] renders of the loaded checkpoint, as ns-render computes them."""
    cameras = cameras.to(pipeline.device)
    return torch.stack([pipeline.model.get_outputs_for_camera(cameras[i : i + 1])["rgb"] for i in range(len(cameras))])


def viewer_camera_path(cameras, fps: int = 3) -> dict:
    """A camera path JSON as nerfstudio's viser viewer saves it (viewer/render_panel.py, "Generate Command"):
    keyframes and one `camera_path` entry per frame, each a flattened 4x4 camera-to-world matrix in nerfstudio
    (OpenGL) world coordinates with a vertical FOV in degrees."""
    height, width = int(cameras.height[0]), int(cameras.width[0])
    frames = []
    for i in range(len(cameras)):
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3] = cameras.camera_to_worlds[i].double()
        fov = math.degrees(2 * math.atan(height / (2 * float(cameras.fy[i]))))
        frames.append({"camera_to_world": c2w.flatten().tolist(), "fov": fov, "aspect": width / height})
    keyframes = [
        {"matrix": f["camera_to_world"], "fov": f["fov"], "aspect": f["aspect"], "override_transition_enabled": False,
         "override_transition_sec": None}
        for f in frames
    ]  # fmt: skip
    return {
        "default_fov": frames[0]["fov"], "default_transition_sec": 1.0, "keyframes": keyframes,
        "camera_type": "perspective", "render_height": height, "render_width": width, "fps": fps,
        "seconds": len(frames) / fps, "is_cycle": False, "smoothness_value": 0.5, "camera_path": frames,
    }  # fmt: skip


def viewer_camera_message(cameras, i: int):
    """A browser's camera message for camera i (the inverse of nerfstudio's Viewer.get_camera_state)."""
    import viser.transforms as vtf
    from viser import _messages

    from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

    c2w = cameras.camera_to_worlds[i].double().numpy()
    rotation = vtf.SO3.from_matrix(c2w[:, :3]) @ vtf.SO3.from_x_radians(np.pi)
    position = c2w[:, 3] * VISER_NERFSTUDIO_SCALE_RATIO
    fov = 2 * math.atan(float(cameras.height[i]) / (2 * float(cameras.fy[i])))
    return _messages.ViewerCameraMessage(
        wxyz=tuple(float(x) for x in rotation.wxyz), position=tuple(float(x) for x in position), fov=fov,
        aspect=float(cameras.width[i] / cameras.height[i]),
        look_at=tuple(float(x) for x in position - c2w[:, 2] * VISER_NERFSTUDIO_SCALE_RATIO),
        up_direction=tuple(float(x) for x in c2w[:, 1]),
    )  # fmt: skip


def viewer_session(config: Path, camera_message, log: Path) -> dict:
    """`ns-viewer --load-config` on a free loopback port: fetch the web client over HTTP, then connect a websocket
    client, send a camera and wait for the render; the viewer is then stopped (its process group)."""
    import msgspec
    from websockets.sync.client import connect

    port = free_port()
    start = time.monotonic()
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [str(BIN / "ns-viewer"), "--load-config", str(config), "--viewer.websocket-port", str(port),
             "--viewer.websocket-host", "127.0.0.1"],
            env=cli_env(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    result: dict = {"http": None, "image": None, "types": [], "exit": None}
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever the env
    try:
        deadline = time.monotonic() + 300
        while result["http"] is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with no_proxy.open(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    result["http"] = (response.status, response.read())
            except OSError:
                time.sleep(0.5)
        result["served_after"] = time.monotonic() - start
        if result["http"] is None:
            return result
        direct = {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {}
        # no keep-alive pings: a viewer busy rendering on a loaded CPU may answer them late
        with connect(f"ws://127.0.0.1:{port}", open_timeout=30, close_timeout=5, max_size=None, ping_interval=None,
                     **direct) as ws:  # fmt: skip
            ws.send(msgspec.msgpack.encode(camera_message.as_serializable_dict()))
            deadline = time.monotonic() + 120
            while result["image"] is None and time.monotonic() < deadline:
                batch = msgspec.msgpack.decode(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                for message in batch if isinstance(batch, list) else [batch]:
                    result["types"].append(message["type"])
                    if message["type"] == "BackgroundImageMessage":
                        result["image"] = message
    except Exception as err:  # reported by the test, with the viewer's log
        result["error"] = repr(err)
    finally:
        result["exit"] = proc.poll()  # None: it was still serving
        if result["exit"] is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
        result["log"] = log.read_text()[-4000:]
    return result


# --- fixtures: train, load, run the tools --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return (
        tiny_scenes(tmp_path_factory.mktemp("scenes"), 1, seed=3, num_frames=FRAMES, size=SIZE, shadows=False)
        / "scene_0000"
    )


@pytest.fixture(scope="module")
def trained(scene, tmp_path_factory) -> dict:
    """(method, "a") -> run dir and ns-train result: one ns-train run per method (the repeat run "b" is a tool job)."""
    root = tmp_path_factory.mktemp("runs")
    outs = {(m, "a"): root / f"{m}-a" for m in METHODS}
    results = run_jobs({k: (lambda k=k, o=o: run_cli(ns_train_args(k[0], scene, o))) for k, o in outs.items()})
    print({k: round(r["seconds"], 1) for k, r in results.items()})
    return {key: dict(results[key], dir=out / "rt" / key[0] / "run") for key, out in outs.items()}


def run_dir(trained, method: str, run: str = "a") -> Path:
    result = trained[(method, run)]
    assert result["rc"] == 0, result["log"]
    assert (result["dir"] / "nerfstudio_models" / f"step-{STEPS - 1:09d}.ckpt").is_file()
    return result["dir"]


@pytest.fixture(scope="module")
def loaded(trained) -> dict:
    """method -> run a's checkpoint loaded here as ns-eval/ns-render load it."""
    from nerfstudio.utils.eval_utils import eval_setup

    pipelines = {}
    for method in METHODS:
        if trained[(method, "a")]["rc"] == 0:
            _, pipeline, _, step = eval_setup(trained[(method, "a")]["dir"] / "config.yml", test_mode="test")
            assert step == STEPS - 1
            pipeline.eval()
            pipelines[method] = pipeline
    return pipelines


@pytest.fixture(scope="module")
def tools(scene, trained, loaded, tmp_path_factory) -> dict:
    """(method, tool) -> result of ns-export gaussian-splat, ns-render camera-path and an ns-viewer session, run
    on run a of each method, and (REPEATED, "train-b"): a second ns-train of itergen with the same seed."""
    root = tmp_path_factory.mktemp("tools")
    ffmpeg = ffmpeg_exe()
    ffmpeg_bin = root / "ffmpeg_bin"  # the chosen ffmpeg first on the tools' PATH
    if ffmpeg is not None:
        ffmpeg_bin.mkdir()
        (ffmpeg_bin / "ffmpeg").symlink_to(ffmpeg)
    repeat = root / f"{REPEATED}-b"  # the longest job first
    jobs: dict = {(REPEATED, "train-b"): lambda: run_cli(ns_train_args(REPEATED, scene, repeat))}
    outputs: dict = {(REPEATED, "train-b"): repeat / "rt" / REPEATED / "run"}
    for method, pipeline in loaded.items():
        config = trained[(method, "a")]["dir"] / "config.yml"
        out = root / method
        out.mkdir()
        held_out = pipeline.datamanager.eval_dataset.cameras[:3]
        if libusb_available():
            outputs[(method, "export")] = out / "export" / "splat.ply"
            jobs[(method, "export")] = lambda c=config, o=out: run_cli(
                [BIN / "ns-export", "gaussian-splat", "--load-config", c, "--output-dir", o / "export"]
            )
        if ffmpeg is not None:
            path_file = out / "camera_paths" / "path.json"
            path_file.parent.mkdir()
            path_file.write_text(json.dumps(viewer_camera_path(held_out)))
            outputs[(method, "render")] = (path_file, out / "renders" / "path.mp4")
            jobs[(method, "render")] = lambda c=config, p=path_file, o=out: run_cli(
                [BIN / "ns-render", "camera-path", "--load-config", c, "--camera-path-filename", p,
                 "--output-path", o / "renders" / "path.mp4"],
                extra_path=ffmpeg_bin,
            )  # fmt: skip
        message = viewer_camera_message(held_out, 0)
        jobs[(method, "viewer")] = lambda c=config, m=message, o=out: viewer_session(c, m, o / "viewer.log")
    results = run_jobs(jobs)
    for key, result in results.items():
        result["output"] = outputs.get(key)
        print(f"{key}: {result.get('seconds', result.get('served_after', 0)):.1f} s")
    return {"results": results, "ffmpeg": ffmpeg and str(ffmpeg_bin / "ffmpeg")}


def tool(tools, method: str, name: str) -> dict:
    if (method, name) not in tools["results"]:
        pytest.skip({"export": LIBUSB_MISSING, "render": FFMPEG_MISSING}.get(name, f"{method} did not train"))
    result = tools["results"][(method, name)]
    assert result.get("rc", 0) == 0, result["log"]
    print(f"{method}: ns-{name} {result.get('seconds', result.get('served_after', 0)):.1f} s")
    return result


# --- ns-export gaussian-splat ---------------------------------------------------------------------------------------


def read_splat_ply(path: Path) -> dict:
    """The Gaussians of a 3DGS .ply (Inria layout, as nerfstudio writes it) as the model's raw parameters."""
    from plyfile import PlyData

    vertex = PlyData.read(str(path))["vertex"]
    names = [p.name for p in vertex.properties]

    def stack(prefix: str) -> torch.Tensor:
        cols = sorted((n for n in names if n.startswith(prefix)), key=lambda n: int(n[len(prefix) :]))
        return torch.from_numpy(np.stack([np.asarray(vertex[n], dtype=np.float32) for n in cols], axis=1))

    n = len(vertex["x"])
    rest = stack("f_rest_")  # channel-major: all coefficients of R, then of G, then of B
    return {
        "means": torch.from_numpy(np.stack([np.asarray(vertex[c], dtype=np.float32) for c in "xyz"], axis=1)),
        "features_dc": stack("f_dc_"),
        "features_rest": rest.reshape(n, 3, -1).transpose(1, 2).contiguous(),
        "opacities": torch.from_numpy(np.asarray(vertex["opacity"], dtype=np.float32))[:, None],
        "scales": stack("scale_"),
        "quats": stack("rot_"),
    }


@pytest.mark.parametrize("method", METHODS)
def test_ns_export_gaussian_splat_ply_renders_like_the_checkpoint(method, trained, loaded, tools):
    run_dir(trained, method)
    ply = tool(tools, method, "export")["output"]
    assert ply.is_file()
    pipeline = loaded[method]
    model = pipeline.model
    original = {k: v.detach().clone() for k, v in model.gauss_params.items()}
    from_file = read_splat_ply(ply)
    assert from_file["means"].shape == original["means"].shape  # nothing filtered: all finite, none below 1/255
    assert from_file["features_rest"].shape == original["features_rest"].shape == (POINTS, 15, 3)  # SH degree 3
    assert original["features_rest"].abs().max() > 1e-4  # the higher SH bands were trained: their order matters

    cameras = pipeline.datamanager.eval_dataset.cameras[:3]
    reference = render(pipeline, cameras)
    try:
        for name, value in from_file.items():
            model.gauss_params[name] = torch.nn.Parameter(value.to(model.device))
        from_ply = render(pipeline, cameras)
    finally:
        for name, value in original.items():
            model.gauss_params[name] = torch.nn.Parameter(value)
    values = [psnr(a, b) for a, b in zip(reference, from_ply)]
    print(f"{method}: ply render vs checkpoint render PSNR {values} dB, {ply.stat().st_size} bytes")
    assert reference.std() > 0.02  # a scene, not a flat background
    assert min(values) > 40.0, values


# --- ns-render camera-path ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_ns_render_camera_path_from_a_viewer_json(method, trained, loaded, tools):
    import mediapy

    from nerfstudio.cameras.camera_paths import get_path_from_json

    run_dir(trained, method)
    path_file, video = tool(tools, method, "render")["output"]
    assert video.is_file()
    mediapy.set_ffmpeg(tools["ffmpeg"])
    frames = torch.from_numpy(np.asarray(mediapy.read_video(str(video)))).float() / 255.0
    assert frames.shape == (3, SIZE, SIZE, 3)
    pipeline = loaded[method]
    # the path's cameras are the held-out cameras (pose and FOV survive the JSON), and the video shows their renders
    expected = render(pipeline, get_path_from_json(json.loads(path_file.read_text())))
    held_out = render(pipeline, pipeline.datamanager.eval_dataset.cameras[:3])
    assert min(psnr(a, b) for a, b in zip(expected, held_out)) > 40.0
    values = [psnr(a, b) for a, b in zip(expected, frames)]
    print(f"{method}: ns-render video (h264) vs in-process render PSNR {values} dB")
    assert min(values) > 25.0, values  # lossy h264 at 32x32 px


# --- ns-viewer ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_ns_viewer_serves_the_scene(method, trained, loaded, tools):
    from PIL import Image

    run_dir(trained, method)
    session = tool(tools, method, "viewer")
    assert "error" not in session, (session["error"], session["log"])
    assert session["http"] is not None, session["log"]
    assert session["exit"] is None, session["log"]  # still serving when stopped
    status, page = session["http"]
    assert status == 200 and b"<html" in page.lower()
    assert session["image"] is not None, (sorted(set(session["types"])), session["log"])
    shown = Image.open(io.BytesIO(session["image"]["rgb_bytes"])).convert("RGB")
    shown = torch.from_numpy(np.asarray(shown)).float() / 255
    assert shown.ndim == 3 and shown.shape[0] == shown.shape[1] >= 16 and shown.std() > 0.02
    # the viewer drew held-out view 0: the checkpoint's render of it, up to JPEG and resampling
    pipeline = loaded[method]
    expected = render(pipeline, pipeline.datamanager.eval_dataset.cameras[:1])[0].permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(expected, size=shown.shape[:2], mode="bilinear", antialias=True)
    value = psnr(expected[0].permute(1, 2, 0), shown)
    print(f"{method}: viewer render {tuple(shown.shape)} vs checkpoint render PSNR {value:.1f} dB")
    assert value > 20.0, value


# --- ns-eval and seeded reproduction ---------------------------------------------------------------------------------


def ns_eval(config: Path, result: Path, monkeypatch) -> dict:
    """ns-eval in this process: its console-script entry point with the same argv."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="ns-eval")
    monkeypatch.setattr(sys, "argv", ["ns-eval", "--load-config", str(config), "--output-path", str(result)])
    script.load()()
    return json.loads(result.read_text())


def quality(results: dict) -> dict:
    """ns-eval's metrics without the timings (fps, rays per second)."""
    return {k: v for k, v in results.items() if "fps" not in k and "rays" not in k}


@pytest.mark.parametrize("method", METHODS)
def test_ns_eval_json_and_same_seed_runs_give_identical_metrics(method, trained, tools, tmp_path, monkeypatch):
    a = run_dir(trained, method, "a")
    print(f"{method}: ns-train {trained[(method, 'a')]['seconds']:.1f} s")
    report = ns_eval(a / "config.yml", tmp_path / "a.json", monkeypatch)
    assert report["method_name"] == method and report["checkpoint"].endswith(f"step-{STEPS - 1:09d}.ckpt")
    metrics = report["results"]
    assert {"psnr", "ssim", "psnr_std", "ssim_std", "fps"} <= set(metrics)
    assert 5.0 < metrics["psnr"] < 60.0 and 0.0 < metrics["ssim"] <= 1.0
    print(f"{method}: ns-eval {quality(metrics)}")
    if method != REPEATED:
        return
    b = tool(tools, method, "train-b")["output"]
    assert (b / "nerfstudio_models" / f"step-{STEPS - 1:09d}.ckpt").is_file()
    ckpt = f"nerfstudio_models/step-{STEPS - 1:09d}.ckpt"
    weights_a = torch.load(a / ckpt, map_location="cpu", weights_only=True)["pipeline"]
    weights_b = torch.load(b / ckpt, map_location="cpu", weights_only=True)["pipeline"]
    assert weights_a.keys() == weights_b.keys()
    assert [k for k in weights_a if not torch.equal(weights_a[k], weights_b[k])] == []  # bit-identical weights
    again = ns_eval(b / "config.yml", tmp_path / "b.json", monkeypatch)["results"]
    assert quality(again) == quality(metrics)
