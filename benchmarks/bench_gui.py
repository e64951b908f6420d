"""GUI responsiveness of the Segment widget: Run -> Labels layer time and event-loop stalls.

Opens a real napari viewer (``show=True``; run it under Xvfb on a machine without a screen),
adds a 1024 x 1024 nuclei image (the packaged 520 x 696 sample, mirror-tiled), docks the
Segment widget through napari's plugin menu path, keeps the default built-in model
(``nuclei``) and clicks Run, so the segmentation runs in the widget's worker thread exactly
as for a user. For each repetition it measures

* Run -> layer: from the click to the moment the ``"<image> segmentation"`` Labels layer is
  inserted into the viewer (the layer is removed before the next repetition, so every
  repetition creates it anew);
* longest stall: a 10 ms ``QTimer`` on the GUI thread records the largest gap between two
  ticks minus the 10 ms period, from just before the click until the worker has finished. This
  is the longest time the viewer could not repaint or react to the mouse;
* napari alone: the longest stall while napari adds (and draws) a Labels layer of the same
  shape with nothing else running, the floor for any plugin that adds its result as a layer.

After each GUI repetition it times ``tiled_unet.core.predict.segment`` (model loading
included, as in the widget's job) on the same array in the same process, with the viewer idle,
so the overhead of the GUI path is visible and both see the same machine load. Medians of ``--repeat`` runs.
Example::

    xvfb-run -a python benchmarks/bench_gui.py --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np


def nuclei_1024(size: int = 1024) -> np.ndarray:
    """The packaged nuclei sample mirror-tiled to ``size x size`` (uint8)."""
    from tiled_unet._sample_data import nuclei

    img = nuclei()[0][0]
    rows = np.concatenate([img, img[::-1]], axis=0)
    block = np.concatenate([rows, rows[:, ::-1]], axis=1)  # seamless when repeated
    reps = (-(-size // block.shape[0]), -(-size // block.shape[1]))
    return np.ascontiguousarray(np.tile(block, reps)[:size, :size])


class StallProbe:
    """A QTimer that records the largest gap between its ticks (minus its period)."""

    def __init__(self, period_ms: int = 10) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.period = period_ms / 1000.0
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(period_ms)
        self.timer.timeout.connect(self._tick)
        self.last = 0.0
        self.t0 = 0.0
        self.max_stall = 0.0
        self.at = 0.0  # seconds after start() when the longest stall ended
        self.ticks = 0

    def start(self) -> None:
        self.t0 = self.last = time.perf_counter()
        self.max_stall, self.at, self.ticks = 0.0, 0.0, 0
        self.timer.start()

    def stop(self) -> None:
        self._tick()
        self.timer.stop()

    def _tick(self) -> None:
        now = time.perf_counter()
        stall = now - self.last - self.period
        if stall > self.max_stall:
            self.max_stall, self.at = stall, now - self.t0
        self.last = now
        self.ticks += 1


class GcPasses:
    """The garbage collector's passes (``gc.callbacks``), each timed. A pass holds the GIL, so a
    long one stalls the GUI thread whichever thread's allocation started it; a full pass
    (generation 2) walks every object of the process: napari's, torch's, ours."""

    def __init__(self, phase: Any = None) -> None:
        self.phase = phase or (lambda: "")
        self.passes: list[tuple[str, int, float]] = []  # (phase, generation, seconds)
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, what: str, info: dict) -> None:
        if what == "start":
            self._start = time.perf_counter()
        else:
            self.passes.append((self.phase(), int(info["generation"]), time.perf_counter() - self._start))

    def take(self) -> list[tuple[str, int, float]]:
        """The passes since the last call."""
        out, self.passes = self.passes, []
        return out

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


def gc_summary(passes: list[tuple[str, int, float]]) -> tuple[int, float]:
    """(number of full passes, longest pass in seconds)."""
    return sum(g == 2 for _, g, _ in passes), max((d for _, _, d in passes), default=0.0)


def napari_floor(viewer: Any, shape: tuple[int, ...], name: str) -> float:
    """The longest stall (s) of napari alone adding a Labels layer of ``shape`` (and drawing it):
    what any plugin that adds its result as a layer costs the event loop."""
    from qtpy.QtCore import QEventLoop, QTimer

    labels = np.zeros(shape, np.uint16)
    labels[: shape[0] // 2, : shape[1] // 2] = 1
    probe, loop, passes = StallProbe(10), QEventLoop(), GcPasses()
    probe.start()
    QTimer.singleShot(50, lambda: viewer.add_labels(labels, name=name))
    QTimer.singleShot(1500, loop.quit)
    loop.exec()
    probe.stop()
    passes.close()
    viewer.layers[name].visible = False  # kept: removing it right away crashed Mesa here
    return probe.max_stall, gc_summary(passes.take())


def gui_run(viewer: Any, widget: Any, image_name: str, timeout: float = 600.0) -> dict[str, float]:
    """Click Run once and wait (in a Qt event loop) until the layer is there and the worker ended."""
    from napari.layers import Labels
    from qtpy.QtCore import QEventLoop, QTimer

    target = f"{image_name} segmentation"
    if target in viewer.layers:
        viewer.layers.remove(target)
    state: dict[str, float] = {}
    loop = QEventLoop()

    def on_inserted(event: Any) -> None:
        layer = event.value
        if isinstance(layer, Labels) and layer.name == target and "layer" not in state:
            state["layer"] = time.perf_counter()

    def check() -> None:
        if "layer" in state and not widget.running:
            loop.quit()

    poll = QTimer()
    poll.setInterval(20)
    poll.timeout.connect(check)
    viewer.layers.events.inserted.connect(on_inserted)
    probe, passes = StallProbe(10), GcPasses()
    deadline = QTimer()
    deadline.setSingleShot(True)
    deadline.timeout.connect(loop.quit)
    try:
        probe.start()
        t0 = time.perf_counter()
        widget.run_button.native.click()  # the widget starts its thread worker, as for a user
        poll.start()
        deadline.start(int(timeout * 1000))
        loop.exec()
        t_end = time.perf_counter()
        probe.stop()
    finally:
        poll.stop()
        passes.close()
        viewer.layers.events.inserted.disconnect(on_inserted)
    if "layer" not in state:
        raise RuntimeError(f"no layer after {timeout} s: {widget.status.value}")
    return {
        "run_to_layer": state["layer"] - t0,
        "widget_to_layer": float(widget.last_seconds_to_layer or float("nan")),
        "job_seconds": float(widget.last_result.seconds),
        "stall": probe.max_stall,
        "stall_at": probe.at,
        "ticks": probe.ticks,
        "until_idle": t_end - t0,
        "objects": float(widget.last_result.n_objects or 0),
        "gc": gc_summary(passes.take()),
    }


class PhaseStallProbe(StallProbe):
    """A stall probe that files each stall under the phase ``phase()`` names when it ends."""

    def __init__(self, phase: Any, period_ms: int = 10) -> None:
        super().__init__(period_ms)
        self.phase = phase
        self.by_phase: dict[str, float] = {}

    def _tick(self) -> None:
        now = time.perf_counter()
        stall = now - self.last - self.period
        name = self.phase()
        self.by_phase[name] = max(self.by_phase.get(name, 0.0), stall)
        super()._tick()


def finetune_run(
    viewer: Any, truth: np.ndarray, minutes: float, preview: int, timeout: float = 900.0
) -> dict:
    """Paint 40 % of the nuclei (+ a background ring), click Start, file GUI stalls by phase."""
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication
    from scipy import ndimage as ndi

    _, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
    QApplication.processEvents()
    ann = ft.annotations.new_annotation_layer()
    rng = np.random.default_rng(0)
    ids = np.unique(truth)[1:]
    chosen = rng.choice(ids, size=max(1, int(0.4 * len(ids))), replace=False)
    painted = np.isin(truth, chosen)
    data = np.zeros(truth.shape, np.uint16)
    data[ndi.binary_dilation(painted, iterations=8) & (truth == 0)] = 1
    for new, old in enumerate(chosen, start=2):
        data[truth == old] = new
    ann.data = data
    ft.minutes_spin.value = minutes
    ft.steps_spin.value = 0
    ft.preview_spin.value = preview
    settle = QEventLoop()  # let the viewer draw the new dock and layer before measuring
    QTimer.singleShot(1500, settle.quit)
    settle.exec()

    def phase() -> str:
        if not ft.running:
            return "idle (result shown)"
        text = ft.progress.native.format()
        if text.startswith("step"):
            return "training" + (" + preview" if ft.preview.busy else "")
        return "preparing" if not len(ft.plot.history) else "checking held-back objects"

    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(50)
    poll.timeout.connect(lambda: None if ft.running else loop.quit())
    probe, passes = PhaseStallProbe(phase), GcPasses(phase)
    probe.start()
    t0 = time.perf_counter()
    ft.run_button.native.click()
    poll.start()
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    loop.exec()
    seconds = time.perf_counter() - t0
    # a moment after the end, while the Segment widget refreshes its result with the new model
    end = QEventLoop()
    QTimer.singleShot(3000, end.quit)
    end.exec()
    probe.stop()
    poll.stop()
    passes.close()
    by_phase: dict[str, list] = {}
    for item in passes.take():
        by_phase.setdefault(item[0], []).append(item)
    return {
        "gc": {name: gc_summary(items) for name, items in by_phase.items()},
        "seconds": seconds,
        "steps": len(ft.plot.history),
        "stalls": probe.by_phase,
        "status": ft.status.value,
    }


def core_run(image: np.ndarray, model: str, device: str) -> float:
    from tiled_unet.core.checkpoint import resolve_model
    from tiled_unet.core.predict import segment

    t = time.perf_counter()
    segment(resolve_model(model), image, device=device)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--device", default="auto", help="device chosen in the widget and for the core run")
    parser.add_argument(
        "--finetune", type=float, default=0.0, metavar="MIN", help="then fine-tune for MIN minutes (0: skip)"
    )
    parser.add_argument(
        "--preview", type=int, default=20, help="live preview every N steps while fine-tuning"
    )
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-gui-")
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"):
        os.environ.setdefault(name, os.path.join(tmp, name.lower()))
        os.makedirs(os.environ[name], mode=0o700, exist_ok=True)
    os.environ.setdefault("NAPARI_CONFIG", os.path.join(tmp, "napari-settings.yaml"))
    os.environ.pop("QT_QPA_PLATFORM", None)  # offscreen breaks napari's OpenGL canvas

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    image = nuclei_1024(args.size)
    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name="nuclei", colormap="gray")
    _, widget = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    QApplication.processEvents()
    widget.image_combo.set_layer(viewer.layers["nuclei"])
    while not widget.warm:  # accelerators are listed once torch is loaded (a worker thread)
        QApplication.processEvents()
        time.sleep(0.01)
    widget.device_combo.value = args.device
    model = widget.model_combo.current_choice
    if model != "nuclei":
        raise SystemExit(f"default model is {model!r}, expected 'nuclei'")

    print(
        f"image {image.shape} {image.dtype}, model {model}, device {args.device}, "
        f"napari {napari.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print()
    print(
        "| run | Run->layer s | job s (worker) | longest stall ms | stall from..to s | timer ticks "
        "| objects | full GC passes | longest GC pass ms | core segment() s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows, core = [], []
    for i in range(args.repeat):
        # GUI and core runs interleave, so both see the same load on a shared machine
        r = gui_run(viewer, widget, "nuclei")
        rows.append(r)
        core.append(core_run(image, "nuclei", args.device))
        print(
            f"| {i + 1} | {r['run_to_layer']:.2f} | {r['job_seconds']:.2f} | {r['stall'] * 1000:.0f} | "
            f"{r['stall_at'] - r['stall']:.2f}..{r['stall_at']:.2f} | {r['ticks']} | {r['objects']:.0f} "
            f"| {r['gc'][0]} | {r['gc'][1] * 1000:.0f} | {core[-1]:.2f} |"
        )
    floors = [napari_floor(viewer, image.shape, f"napari floor {i}") for i in range(args.repeat)]
    floor = [f for f, _ in floors]
    viewer.close()
    if args.finetune > 0:
        from tiled_unet._sample_data import nuclei_with_labels

        (img, _, _), (truth, _, _) = nuclei_with_labels()
        viewer = napari.Viewer(show=True)  # a fresh viewer (Mesa crashed when reusing the first)
        viewer.add_image(img, name="sample", colormap="gray")
        _, seg = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
        QApplication.processEvents()
        seg.image_combo.set_layer(viewer.layers["sample"])
        seg.device_combo.value = args.device
        gui_run(viewer, seg, "sample")  # a segmentation to refresh when the new model is used
        ft = finetune_run(viewer, np.asarray(truth), args.finetune, args.preview)
        viewer.close()
        print()
        print(f"Fine-tune ({args.finetune} min budget, preview every {args.preview} steps, sample 520x696):")
        print(f"{ft['steps']} steps in {ft['seconds']:.1f} s; status: {ft['status']}")
        print("| phase | longest stall ms | full GC passes | longest GC pass ms |")
        print("|---|---|---|---|")
        for name, stall in ft["stalls"].items():
            n_full, longest = ft["gc"].get(name, (0, 0.0))
            print(f"| {name} | {stall * 1000:.0f} | {n_full} | {longest * 1000:.0f} |")

    def fmt(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    layer_s = [r["run_to_layer"] for r in rows]
    job_s = [r["job_seconds"] for r in rows]
    stalls = [r["stall"] for r in rows]
    med_layer, med_job, med_core = (statistics.median(v) for v in (layer_s, job_s, core))
    print()
    print("| measure | median | all runs |")
    print("|---|---|---|")
    print(f"| Run -> Labels layer (GUI) | {med_layer:.2f} s | {fmt(layer_s)} |")
    print(f"| segment_job in the worker | {med_job:.2f} s | {fmt(job_s)} |")
    stall_ms = [s * 1000 for s in stalls]
    print(f"| longest GUI stall | {statistics.median(stall_ms):.0f} ms | {fmt(stall_ms)} ms |")
    floor_ms = [f * 1000 for f in floor]
    print(f"| napari add_labels alone (stall) | {statistics.median(floor_ms):.0f} ms | {fmt(floor_ms)} ms |")
    floor_gc = ", ".join(f"{n} full, {d * 1000:.0f} ms" for _, (n, d) in floors)
    print(f"| napari add_labels alone: GC passes (full, longest) | - | {floor_gc} |")
    print(f"| core segment() only | {med_core:.2f} s | {fmt(core)} |")
    overhead = med_layer - med_core
    print(
        f"| GUI overhead (Run->layer minus core) | {overhead:+.2f} s | {overhead / med_core * 100:+.0f} % |"
    )


if __name__ == "__main__":
    main()
