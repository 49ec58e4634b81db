"""The itergen viewer in a real browser: train, open the viewer in headless Chromium, screenshot, check.

Starts ``ns-train itergen`` with the viewer on a loopback port (a small procedural scene and the shipped generator,
or ``--generator random`` for the untrained 32-px tiny model; the run stays up after training so the viewer keeps
serving), waits until the viewer serves and training (hence at least one generated clip) is done, opens it in
headless Chromium with software WebGL (SwiftShader through ANGLE) driven through the DevTools protocol, pulls the
viewer camera back and orbits it with mouse events, and saves ``Page.captureScreenshot`` to ``--out`` once two
screenshots in a row agree (the viewer's full-resolution render has arrived)::

    python scripts/viewer_screenshot.py                          # -> docs/viewer.png (about 80 s on 2 cores)
    python scripts/viewer_screenshot.py --out /tmp/v.png --generator random --steps 60

Checks (all must hold, else a non-zero exit; the last screenshot is still saved): the 3D canvas left of the control
panel is not blank (spread and distinct colours, not one flat colour), the clip's orange frustums are visible in it
(>= 100 pixels of their colour), and the DOM (Runtime.evaluate) has the "IterGen generations" panel with a
"Clip N" caption and its render/sample image loaded. ``chromium --headless --screenshot`` alone is
not enough: without a GL backend the canvas stays blank, and it does not wait for the websocket scene to arrive.

Needs the Debian package ``chromium`` (``apt-get install -y chromium``) or ``--chromium PATH``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]  # this checkout: ns-train runs its code, not another editable install's
PANEL_TITLE = "IterGen generations"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Software WebGL: without these flags headless Chromium has no GL context and viser's canvas stays blank.
GL_FLAGS = ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]


def find_chromium(explicit: Optional[str] = None) -> Optional[str]:
    if explicit:
        return explicit if shutil.which(explicit) or Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> Optional[bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except OSError:
        return None


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5, alive=None):
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError naming ``what``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if alive is not None:
            alive()
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page target's websocket."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(ws_url, max_size=None, open_timeout=20))
        self.next_id = 0

    def call(self, method: str, timeout: float = 60.0, **params) -> Dict[str, Any]:
        self.next_id += 1
        msg_id = self.next_id
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        end = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, end - time.monotonic())))
            if reply.get("id") == msg_id:  # events (no id) and stale replies are skipped
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"Runtime.evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> np.ndarray:
        from PIL import Image

        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def close(self) -> None:
        self._stack.close()


# What the page shows, read from the DOM: the panel (found by its title text), its image sheet, the 3D canvas, and
# the left edge of the floating control panel (which covers the canvas on the right).
FIND_TITLE = """const findTitle = (text) => {
    if (!document.body) return null;  // still loading
    const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) if (n.nodeValue.trim() === text) return n.parentElement;
    return null;
  };"""
DOM_PROBE = """(() => {
  %(find)s
  const title = findTitle(%(title)s);
  const box = e => { if (!e) return null; const r = e.getBoundingClientRect();
    return {x: r.x, y: r.y, w: r.width, h: r.height}; };
  let panel = null, img = null, side = null;
  for (let e = title; e && !img; e = e.parentElement) {
    img = e.querySelector('img[src^="data:image/png"]');
    panel = e;
  }
  for (let e = title; e && e.getBoundingClientRect().width < window.innerWidth / 2; e = e.parentElement) side = e;
  const canvases = [...document.querySelectorAll('canvas')].map(box).sort((a, b) => b.w * b.h - a.w * a.h);
  return {
    title: !!title,
    clip: panel ? (panel.innerText.match(/Clip \\d+[^\\n]*/) || [null])[0] : null,
    legend: panel ? /renders of the 3D model/.test(panel.innerText) : false,
    img: img ? {natural_w: img.naturalWidth, natural_h: img.naturalHeight, box: box(img)} : null,
    control_panel_x: side ? side.getBoundingClientRect().x : null,
    canvas: canvases.length ? canvases[0] : null,
    webgl2: !!document.createElement('canvas').getContext('webgl2'),
  };
})()"""

# Scroll the control panel so the itergen panel is in view (it sits below nerfstudio's tabs).
SCROLL_PANEL = """(() => {
  %(find)s
  const title = findTitle(%(title)s);
  if (title) title.scrollIntoView({block: 'start'});
  return !!title;
})()"""


def js(template: str) -> str:
    return template % {"find": FIND_TITLE, "title": json.dumps(PANEL_TITLE)}


def scene_region(shot: np.ndarray, dom: dict) -> np.ndarray:
    """The part of the 3D canvas not covered by the control panel."""
    c = dom["canvas"]
    right = dom["control_panel_x"] if dom.get("control_panel_x") else c["x"] + c["w"]
    y0, y1 = max(0, int(c["y"])), min(shot.shape[0], int(c["y"] + c["h"]))
    x0, x1 = max(0, int(c["x"])), min(shot.shape[1], int(right))
    return shot[y0:y1, x0:x1]


def canvas_stats(region: np.ndarray) -> dict:
    """Is the canvas drawn? A blank one (no WebGL, nothing received) is one flat colour: report the fraction of
    pixels away from the median colour, the spread, the number of distinct colours (8 levels a channel) and the
    pixels of the generated-clip frustums' colour."""
    pixels = region.reshape(-1, 3).astype(float)
    median = np.median(pixels, axis=0)
    r, g, b = pixels.T
    frustum = (r > 200) & (g > 90) & (g < 190) & (b < 80)  # FRUSTUM_COLOR (255, 140, 0) after shading/blending
    return {
        "off_background_fraction": float((np.abs(pixels - median).max(axis=1) > 24).mean()),
        "std": float(pixels.std()),
        "distinct_colors": int(len(np.unique((pixels // 32).astype(np.int64) @ np.array([64, 8, 1])))),
        "frustum_pixels": int(frustum.sum()),
    }


def scene_drawn(stats: dict) -> bool:
    return stats["std"] > 8 and stats["distinct_colors"] >= 8 and stats["frustum_pixels"] >= 100


@dataclass
class ViewerScreenshot:
    """Train itergen with the viewer, screenshot it in headless Chromium and check what is drawn."""

    out: Path = Path("docs/viewer.png")
    """Where the screenshot is written."""
    steps: int = 300
    """Training steps; the run then idles with the viewer up until the screenshot is taken."""
    generator: Literal["shipped", "random"] = "shipped"
    """shipped: the generator in itergen_ns/weights/generator (what `ns-train itergen` uses by default; 64 px);
    random: the untrained 32-px tiny model (fast; its samples are noise, so are the views trained on them)."""
    size: Optional[int] = None
    """Scene image side in pixels; default: the generator's resolution (64 shipped, 32 random)."""
    init_points: int = 3000
    generate_every: int = 50
    frames: int = 12
    seed: int = 3
    """Procedural scene seed."""
    width: int = 1280
    height: int = 800
    """Browser window size."""
    chromium: Optional[str] = None
    """Browser binary; default: the first of chromium, chromium-browser, google-chrome on PATH."""
    timeout: float = 240.0
    """Seconds for the whole run (training start, first clip, page load, first render)."""
    workdir: Optional[Path] = None
    """Scene, run outputs and browser profile; default: a temporary directory, removed afterwards."""
    zoom_out: int = 8
    """Mouse-wheel notches pulling the viewer camera back from viser's default (which starts inside the scene)."""
    orbit: Tuple[int, int] = (0, 40)
    """Left-drag (dx, dy) in pixels after zooming: orbits the viewer camera."""
    extra_args: List[str] = field(default_factory=list)
    """More ns-train arguments (e.g. --pipeline.generator.checkpoint DIR instead of the random tiny model)."""

    def main(self) -> dict:
        if self.workdir is None:
            with tempfile.TemporaryDirectory(prefix="itergen-viewer-") as tmp:
                return self.run(Path(tmp))
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self.run(self.workdir)

    def train_command(self, scene: Path, out: Path, port: int) -> List[str]:
        ns_train = Path(sys.executable).parent / "ns-train"
        if self.generator == "random":
            generator = ["--pipeline.generator.random-init", "True", "--pipeline.generator.num-inference-steps", "2"]
        else:
            generator = []
        return (
            [str(ns_train if ns_train.exists() else "ns-train"), "itergen", "--data", str(scene)]
            + ["--output-dir", str(out), "--experiment-name", "viewer", "--timestamp", "run"]
            + ["--max-num-iterations", str(self.steps), "--vis", "viewer", "--logging.local-writer.enable", "False"]
            + ["--viewer.websocket-port", str(port), "--viewer.websocket-host", "127.0.0.1"]
            + ["--viewer.quit-on-train-completion", "False", "--steps-per-save", str(10**9)]
            + ["--pipeline.datamanager.init-num-points", str(self.init_points)]
            + ["--pipeline.generation.generate-every", str(self.generate_every)]
            + generator
            + list(self.extra_args)
        )

    def run(self, work: Path) -> dict:
        chromium = find_chromium(self.chromium)
        if chromium is None:
            raise FileNotFoundError("no Chromium found (apt-get install -y chromium, or pass --chromium PATH)")
        from itergen_ns.data.scenes import make_scenes

        t0 = time.monotonic()
        timings: Dict[str, float] = {}
        deadline = t0 + self.timeout
        left = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731

        make_scenes(work / "scenes", num_scenes=1, seed=self.seed, num_frames=self.frames, resolution=self.size or (32 if self.generator == "random" else 64),
                    supersample=1, shadows=False)  # fmt: skip
        scene = work / "scenes" / "scene_0000"
        port, debug_port = free_port(), free_port()
        log_path = work / "ns-train.log"
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), COLUMNS="200")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
        train = browser = devtools = None
        log = open(log_path, "w")
        try:
            train = subprocess.Popen(self.train_command(scene, work / "runs", port), stdout=log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip

            def train_alive():
                if train.poll() is not None:
                    raise RuntimeError(f"ns-train exited ({train.returncode}):\n{log_path.read_text()[-3000:]}")

            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: http_get(url), left(), f"the viewer at {url}", alive=train_alive)
            timings["viewer_up_s"] = time.monotonic() - t0
            # The browser opens once training is over (the run then idles with the viewer up): the CPU is free for
            # software GL and the viewer's renders, and the panel shows its final clip.
            wait_for(
                lambda: "Use ctrl+c to quit" in log_path.read_text(), left(), "the end of training", alive=train_alive
            )
            if "itergen: clip" not in log_path.read_text():
                raise RuntimeError(f"ns-train generated no clip:\n{log_path.read_text()[-3000:]}")
            timings["trained_s"] = time.monotonic() - t0

            profile = work / "chromium-profile"
            browser = subprocess.Popen(
                [chromium, "--headless=new", f"--remote-debugging-port={debug_port}", "--remote-debugging-address=127.0.0.1",
                 f"--user-data-dir={profile}", f"--window-size={self.width},{self.height}", "--no-first-run",
                 "--no-default-browser-check", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                 *GL_FLAGS, "about:blank"],
                stdout=subprocess.DEVNULL, stderr=open(work / "chromium.log", "w"), start_new_session=True,
            )  # fmt: skip

            def page_target():
                body = http_get(f"http://127.0.0.1:{debug_port}/json/list")
                pages = [t for t in json.loads(body) if t.get("type") == "page"] if body else []
                return pages[0]["webSocketDebuggerUrl"] if pages else None

            devtools = DevTools(wait_for(page_target, min(left(), 60), "Chromium's DevTools endpoint"))
            devtools.call("Page.enable")
            devtools.call("Runtime.enable")
            devtools.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                          deviceScaleFactor=1, mobile=False)  # fmt: skip
            devtools.call("Page.navigate", url=url)
            timings["browser_open_s"] = time.monotonic() - t0

            probe = js(DOM_PROBE)
            dom = wait_for(lambda: (lambda d: d if d["clip"] and d["img"] and d["img"]["natural_w"] else None)(
                devtools.evaluate(probe)), left(), "the itergen panel with a clip", alive=train_alive)  # fmt: skip
            timings["panel_s"] = time.monotonic() - t0
            self.move_camera(devtools, dom["canvas"], dom["control_panel_x"])
            devtools.evaluate(js(SCROLL_PANEL))

            shots: List[np.ndarray] = []

            def settled():  # drawn, and the same picture twice in a row (the viewer's full-resolution render arrived)
                d = devtools.evaluate(probe)
                shots.append(devtools.screenshot())
                stats = canvas_stats(scene_region(shots[-1], d))
                same = len(shots) > 1 and np.abs(shots[-1].astype(int) - shots[-2]).mean() < 0.5
                return (shots[-1], d, stats) if same and scene_drawn(stats) else None

            try:
                shot, dom, stats = wait_for(settled, left(), "the scene render and the clip frustums", poll=2.0)
            except TimeoutError as err:  # keep what the browser showed
                if shots:
                    self.save(shots[-1])
                    stats = canvas_stats(scene_region(shots[-1], devtools.evaluate(probe)))
                    raise TimeoutError(f"{err}; last screenshot in {self.out}: {stats}") from None
                raise
            timings["rendered_s"] = time.monotonic() - t0
            self.save(shot)
            return {
                "out": str(self.out),
                "screenshot_shape": list(shot.shape),
                "canvas": dom["canvas"],
                "control_panel_x": dom["control_panel_x"],
                "canvas_stats": stats,
                "panel_title": dom["title"],
                "panel_clip": dom["clip"],
                "panel_legend": dom["legend"],
                "panel_image": dom["img"],
                "webgl2": dom["webgl2"],
                "timings_s": {k: round(v, 1) for k, v in timings.items()},
            }
        finally:
            if devtools is not None:
                devtools.close()
            for proc in (browser, train):
                if proc is not None and proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
            log.close()

    def move_camera(self, devtools: DevTools, canvas: dict, right: Optional[float]) -> None:
        """Pull the viewer camera back (mouse wheel) and orbit it (left-button drag), as a user would."""
        x = canvas["x"] + ((right or canvas["x"] + canvas["w"]) - canvas["x"]) / 2
        y = canvas["y"] + canvas["h"] / 2
        mouse = lambda kind, px, py, **kw: devtools.call("Input.dispatchMouseEvent", type=kind, x=px, y=py, **kw)  # noqa: E731
        for _ in range(self.zoom_out):
            mouse("mouseWheel", x, y, deltaX=0, deltaY=300)
            time.sleep(0.2)
        dx, dy = self.orbit
        if dx or dy:
            mouse("mouseMoved", x, y)
            mouse("mousePressed", x, y, button="left", buttons=1, clickCount=1)
            for k in range(1, 11):
                mouse("mouseMoved", x + dx * k / 10, y + dy * k / 10, button="left", buttons=1)
                time.sleep(0.05)
            mouse("mouseReleased", x + dx, y + dy, button="left", buttons=1, clickCount=1)

    def save(self, shot: np.ndarray) -> None:
        from PIL import Image

        self.out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(shot).save(self.out, optimize=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    import tyro

    print(json.dumps(tyro.cli(ViewerScreenshot).main(), indent=2))
