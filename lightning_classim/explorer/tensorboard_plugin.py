"""A "Class similarity" tab for TensorBoard: the runs and epochs under the logdir, in the explorer.

Registered under the ``tensorboard_plugins`` entry point (``pyproject.toml``), as TensorBoard's example plugins are:
installing the package is all a user does. TensorBoard loads :class:`ClassSimilarityPlugin`; its frontend
(``tensorboard.js``, an ES module) lists the runs the callback wrote under the logdir (folders with a ``run.json``)
and shows the chosen run's explorer (:func:`lightning_classim.explorer.explorer_html`, every epoch, the slider over
them) in a frame. Routes, under ``/data/plugin/classim/``:

* ``index.js``: the frontend;
* ``runs``: ``[{"run": path relative to the logdir, "epochs": [...], "num_classes": m}]`` as JSON;
* ``explorer?run=<path>``: the run's explorer page (made on request, kept until the run has a new epoch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tensorboard.plugins import base_plugin
from werkzeug import wrappers

__all__ = ["ClassSimilarityPlugin"]

_FRONTEND = Path(__file__).resolve().parent / "tensorboard.js"


def _response(body: str | bytes, content_type: str, status: int = 200) -> wrappers.Response:
    return wrappers.Response(body, status=status, content_type=content_type, headers={"Cache-Control": "no-store"})


class ClassSimilarityPlugin(base_plugin.TBPlugin):
    """TensorBoard's "Class similarity" tab (see the module docstring).

    Args:
        context: TensorBoard's ``TBContext`` (its ``logdir`` is where runs are looked for).
    """

    plugin_name = "classim"

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._logdir = Path(context.logdir or ".").expanduser().resolve() if getattr(context, "logdir", None) else None
        self._pages: dict[str, tuple[tuple[str, ...], str]] = {}

    def get_plugin_apps(self) -> dict[str, Any]:
        """The routes: the frontend, the list of runs, a run's explorer."""
        return {"/index.js": self._index, "/runs": self._runs_route, "/explorer": self._explorer_route}

    def is_active(self) -> bool:
        """Whether the logdir holds a run of the callback."""
        return bool(self.runs())

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        """An ES-module frontend, under the tab name "Class similarity"."""
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Class similarity")

    def runs(self) -> list[dict[str, Any]]:
        """The callback's runs under the logdir (not the other sources' runs inside them), sorted by path."""
        if self._logdir is None or not self._logdir.is_dir():
            return []
        found = []
        for info in sorted(self._logdir.rglob("run.json")):
            folder = info.parent
            if "sources" in folder.relative_to(self._logdir).parts:
                continue
            try:
                meta = json.loads(info.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(meta, dict) or "num_classes" not in meta:
                continue
            epochs = sorted(int(p.name[6:10]) for p in folder.glob("epoch=*") if (p / "summary.json").is_file()
                            and p.name[6:10].isdigit())  # fmt: skip
            if epochs:
                found.append({"run": folder.relative_to(self._logdir).as_posix(), "epochs": epochs,
                              "num_classes": meta.get("num_classes")})  # fmt: skip
        return found

    @wrappers.Request.application  # type: ignore[arg-type]
    def _index(self, request: wrappers.Request) -> wrappers.Response:
        return _response(_FRONTEND.read_text(encoding="utf-8"), "application/javascript")

    @wrappers.Request.application  # type: ignore[arg-type]
    def _runs_route(self, request: wrappers.Request) -> wrappers.Response:
        return _response(json.dumps(self.runs()), "application/json")

    @wrappers.Request.application  # type: ignore[arg-type]
    def _explorer_route(self, request: wrappers.Request) -> wrappers.Response:
        from lightning_classim.explorer import ExplorerEpoch, explorer_html
        from lightning_classim.runs import RunError, load_run

        name = request.args.get("run", "")
        known = {r["run"] for r in self.runs()}
        if name not in known or self._logdir is None:  # only the runs listed: no path outside the logdir
            return _response(f"No run {name!r} of lightning_classim under the logdir.", "text/plain", 404)
        folder = self._logdir / name
        stamp = tuple(sorted(p.name for p in folder.glob("epoch=*")))
        cached = self._pages.get(name)
        if cached is not None and cached[0] == stamp:
            return _response(cached[1], "text/html")
        try:
            run = load_run(folder)
        except RunError as err:
            return _response(f"The run {name!r} cannot be read: {err}", "text/plain", 500)
        epochs = [ExplorerEpoch(s.epoch, s.step, s.result) for s in run.snapshots]
        page = explorer_html(epochs, title=f"{name}", taxonomy=run.info.get("taxonomy"))
        self._pages[name] = (stamp, page)
        return _response(page, "text/html")
