"""Progress bars of the command line over the core's generators (on stderr)."""

from __future__ import annotations

import sys
from typing import Any


def drain_batches(gen: Any, label: str, *, disable: bool, quiet: bool) -> Any:
    """Run a core generator to its end with a tqdm bar over its units (tile batches, blocks);
    the channel and object size used are said in a line each (``nuclei.png: objects ~48 px:
    image scaled 0.42x``)."""
    from tqdm import tqdm

    from tiled_unet.core.progress import drain

    with tqdm(desc=label, unit="batch", file=sys.stderr, disable=disable or quiet, leave=False) as bar:

        def show(progress: Any) -> None:
            if progress.is_choice and not quiet:
                tqdm.write(f"{label}: {progress.message}", file=sys.stderr)
            if progress.total and bar.total != progress.total:
                bar.total = progress.total
                bar.refresh()
            if progress.done > bar.n:
                bar.update(progress.done - bar.n)

        return drain(gen, show)


def drain_steps(gen: Any, total: int | None, disable: bool) -> Any:
    """Run a training generator with a tqdm bar over steps; stages and metrics as lines."""
    from tqdm import tqdm

    from tiled_unet.core.progress import drain

    bar = tqdm(total=total, disable=disable, unit="step", file=sys.stderr)

    def show(p: Any) -> None:
        if p.unit != "step":  # a stage of a fine-tune
            bar.write(str(p.message))
            return
        post = {"loss": f"{p.loss:.4f}"}
        if p.metrics:
            bar.write(
                f"step {p.done} ({p.seconds:.0f} s): loss {p.loss:.4f}, "
                + ", ".join(f"{k} {v:.4f}" for k, v in p.metrics.items())
            )
            post.update({k: f"{v:.3f}" for k, v in p.metrics.items() if k in ("f1", "pixel_error")})
        bar.set_postfix(post, refresh=False)
        bar.update(p.done - bar.n)  # a resumed run starts where it stopped

    try:
        return drain(gen, show)
    finally:
        bar.close()
