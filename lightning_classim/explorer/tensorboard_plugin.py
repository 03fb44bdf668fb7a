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

from lightning_classim._files import read_json

__all__ = ["ClassSimilarityPlugin"]

_FRONTEND = Path(__file__).resolve().parent / "tensorboard.js"


_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _response(body: str | bytes, content_type: str, status: int = 200) -> wrappers.Response:
    headers = dict(_HEADERS)
    if content_type == "text/html":
        from lightning_classim.explorer import explorer_policy

        headers["Content-Security-Policy"] = explorer_policy() + "; frame-ancestors 'self'"
    return wrappers.Response(body, status=status, content_type=content_type, headers=headers)


def _error(message: str, status: int) -> wrappers.Response:
    return _response(message, "text/plain; charset=utf-8", status)


class ClassSimilarityPlugin(base_plugin.TBPlugin):
    """TensorBoard's "Class similarity" tab (see the module docstring).

    Everything under the logdir is read as untrusted input: run folders reached through symbolic links and files
    that are not regular are ignored, and a run that cannot be read is answered with a short 4xx message (never a
    500, a traceback or an absolute path).

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
        from lightning_classim.artifacts import list_snapshots, snapshot_epoch
        from lightning_classim.runs import run_folders_below

        if self._logdir is None or not self._logdir.is_dir():
            return []
        found = []
        for folder in run_folders_below(self._logdir):
            relative = folder.relative_to(self._logdir)
            if "sources" in relative.parts:
                continue
            try:
                meta = read_json(folder / "run.json", 64 * 2**20)
            except (OSError, ValueError):
                continue
            if not isinstance(meta, dict) or type(meta.get("num_classes")) is not int:
                continue
            epochs = sorted({snapshot_epoch(p) for p in list_snapshots(folder)})
            if epochs:
                found.append({"run": relative.as_posix(), "epochs": epochs, "num_classes": meta["num_classes"]})
        return found

    @wrappers.Request.application  # type: ignore[arg-type]
    def _index(self, request: wrappers.Request) -> wrappers.Response:
        return _response(_FRONTEND.read_text(encoding="utf-8"), "application/javascript")

    @wrappers.Request.application  # type: ignore[arg-type]
    def _runs_route(self, request: wrappers.Request) -> wrappers.Response:
        return _response(json.dumps(self.runs()), "application/json")

    @wrappers.Request.application  # type: ignore[arg-type]
    def _explorer_route(self, request: wrappers.Request) -> wrappers.Response:
        import warnings

        from lightning_classim.explorer import write_explorer_page
        from lightning_classim.runs import RunError

        name = request.args.get("run", "")
        known = {r["run"] for r in self.runs()}
        if name not in known or self._logdir is None:  # only the runs listed: no path outside the logdir
            return _error("No such run of lightning_classim under the logdir.", 404)
        folder = self._logdir / name
        stamp = tuple(sorted(p.name for p in folder.glob("epoch=*")))
        cached = self._pages.get(name)
        if cached is not None and cached[0] == stamp:
            return _response(cached[1], "text/html")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a damaged epoch is skipped; the server log is not the place
                page = write_explorer_page(folder, title=name)
        except (RunError, ValueError, OSError):
            return _error("This run cannot be read: its epochs are damaged or incomplete (classim explore says why).",
                          422)  # fmt: skip
        self._pages[name] = (stamp, page)
        return _response(page, "text/html")
