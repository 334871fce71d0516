"""``fluororeg gui``: the registration panel as a web page, on trame-slicer (Slicer's core in a page).

The page works on a real MRML scene (trame-slicer's ``SlicerApp``) through :class:`.web_session.WebSession`,
which does every step with the scene logic the Slicer module uses: load a case (the built-in phantom
with no arguments, ``--data DIR`` or a folder typed in the page), nudge each bone's start pose with
six sliders over a live DRR (coarse while moving, full size once the pose rests), masks from the
data or a segmentation model, Register in a child process (progress, Cancel; the page's event loop
never waits), the result as transform nodes drawn as green outlines, the poses downloaded as JSON.

Elements a test (or a person with the browser's inspector) finds by id: ``load-phantom``, ``data-dir``,
``load-data``, ``bone``, ``pose-x`` ... ``pose-rz`` (sliders) and ``pose-x-value`` ... (number fields),
``overlay`` (the picture), ``register``, ``cancel``, ``progress``, ``status``, ``results``, ``export``,
``error``, ``take-result``, ``model-dir``, ``predict``, ``preview-stats``, ``view`` (``view-0``,
``view-1`` ...: which view of a rig the picture shows).
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse

from ..errors import FluoroRegError
from .overlay import data_url
from .pose_sliders import NAMES
from .web_session import PREVIEW_LONGEST, WebSession, find_inputs, inputs_from_files

LABELS = {"x": "x (mm, across)", "y": "y (mm, down)", "z": "z (mm, depth)", "rx": "turn about x (deg)",
          "ry": "turn about y (deg)", "rz": "turn about z (deg, in-plane)"}
REST_SECONDS = 0.3  # full-size DRR once the pose has not moved for this long
PREVIEW_AFTER_SECONDS = 0.002  # the coarse draw waits this long, so the slider event's reply goes out first
log = logging.getLogger("fluororeg.gui")


class RegistrationPage:
    """The page's state and handlers over a :class:`WebSession` (``server``: a trame server)."""

    def __init__(self, server, session: WebSession):
        self.server, self.session = server, session
        self.state, self.ctrl = server.state, server.controller
        self._quiet = False  # True while the page itself writes slider values
        self._rest = None
        self._preview_due = False  # a coarse draw is scheduled
        self._times: list[float] = []
        self.state.update({"data_dir": "", "model_dir": "", "bone": None, "bones": [], "registered": [], "uploads": None, "track_dir": "", "track_summary": "",
                           "kinematics": "", "frame_index": 0,
                           "frame_count": 1, "views_text": "", "view": 0, "view_items": [], "show_drr": True, "show_masks": True, "use_masks": True,
                           "overlay": "", "progress": 0, "status": "", "results": [], "error": "",
                           "running": False, "export_href": "", "has_result": False, "preview_stats": "",
                           **{f"pose_{k}": 0.0 for k in NAMES}, **{f"pose_{k}_min": -1.0 for k in NAMES},
                           **{f"pose_{k}_max": 1.0 for k in NAMES}})
        self.state.change(*[f"pose_{k}" for k in NAMES])(self.on_slider)
        self.state.change("bone")(lambda bone, **_: self.guard(self.show_bone))
        self.state.change("frame_index")(lambda frame_index, **_: self.guard(self.on_frame, frame_index))
        self.state.change("uploads")(lambda uploads, **_: self.guard(self.on_uploads, uploads))
        self.state.change("registered")(lambda registered, **_: self.guard(self.on_registered, registered))
        self.state.change("show_drr", "show_masks", "view")(lambda **_: self.guard(self.refresh))
        self.ctrl.load_phantom = lambda: self.guard(self.load, None)
        self.ctrl.load_data = lambda: self.guard(self.load, self.state.data_dir)
        self.ctrl.predict = lambda: self.guard(self.predict)
        self.ctrl.register = lambda: self.guard(self.register)
        self.ctrl.cancel = lambda: self.guard(self.session.cancel)
        self.ctrl.take_result = lambda: self.guard(self.take_result)
        self.ctrl.load_track = lambda: self.guard(self.load_track)

    # ------------------------------------------------------------------------------------ handlers
    def guard(self, function, *args):
        """Run a handler; a failure becomes the page's one-line error, never a dead page."""
        try:
            self.state.error = ""
            return function(*args)
        except FluoroRegError as err:
            self.state.error = str(err)
        except Exception as err:  # noqa: BLE001 - shown in one line, logged with its traceback
            log.exception("fluororeg gui")
            self.state.error = f"internal error: {type(err).__name__}: {err} (see the server's log)"
        return None

    def load(self, folder) -> None:
        if folder:
            self.session.load_inputs(find_inputs(folder.strip()))
        else:
            self.session.load_phantom()
        self.after_load()

    def after_load(self) -> None:
        self.state.update({"bones": list(self.session.sliders), "registered": list(self.session.bones),
                           "frame_count": len(self.session.frames), "frame_index": 0,
                           "views_text": (f"{len(self.session.view_names)} views ({', '.join(self.session.view_names)}), "
                                          "registered together; pick the one shown")
                           if len(self.session.view_names) > 1 else "",
                           "view": 0, "view_items": [{"title": f"view {name}", "value": k}
                                                     for k, name in enumerate(self.session.view_names)],
                           "results": [], "status": "", "progress": 0, "has_result": False, "export_href": ""})
        self.state.bone = self.session.bones[0] if self.session.bones else None
        self.show_bone()

    def on_uploads(self, uploads) -> None:
        """Files picked in the page: written to a folder of the server's, then loaded as a case."""
        import tempfile
        from pathlib import Path

        from trame.app.file_upload import ClientFile

        if not uploads:
            return
        folder = Path(tempfile.mkdtemp(prefix="fluororeg-upload-"))
        paths = []
        for item in uploads if isinstance(uploads, list) else [uploads]:
            upload = ClientFile(item)
            if upload.is_empty:
                continue
            path = folder / Path(upload.name).name  # a name, never a path from the client
            path.write_bytes(upload.content)
            paths.append(path)
        self.session.load_inputs(inputs_from_files(paths))
        self.after_load()

    def show_bone(self) -> None:
        """The selected bone's slider values and ranges (the sliders show the pose, not offsets)."""
        bone = self.state.bone
        if bone not in self.session.sliders:
            return
        values, ranges = self.session.values(bone), self.session.ranges(bone)
        self._quiet = True
        updates = {}
        for k in NAMES:
            lo, hi = ranges[k]
            updates.update({f"pose_{k}": round(values[k], 2), f"pose_{k}_min": round(min(lo, values[k]), 1),
                            f"pose_{k}_max": round(max(hi, values[k]), 1)})
        self.state.update(updates)
        self.state.flush()
        self._quiet = False
        self.refresh()

    def on_slider(self, **_):
        if self._quiet or self.state.bone not in self.session.sliders:
            return
        values = {k: self.state[f"pose_{k}"] for k in NAMES}
        current = self.session.values(self.state.bone)
        changed = {k: float(v) for k, v in values.items() if _number(v) and abs(float(v) - current[k]) > 0.006}  # the page shows 2 decimals
        if not changed:
            return
        for name, value in changed.items():
            self.guard(self.session.move, self.state.bone, name, value)
        self.schedule_preview()
        self.schedule_rest()

    def schedule_preview(self) -> None:
        """Draw the coarse DRR after this event's reply has gone out, once for all the slider events
        that arrive meanwhile: the browser sends its next value as soon as the reply comes, so the
        pictures keep pace with the draw, not with a draw plus a round trip (the latest pose wins)."""
        if self._preview_due:
            return
        self._preview_due = True
        asyncio.get_event_loop().call_later(PREVIEW_AFTER_SECONDS, self._preview)

    def _preview(self) -> None:
        self._preview_due = False
        with self.state:
            self.guard(self.refresh, PREVIEW_LONGEST)

    def schedule_rest(self) -> None:
        """Full-size DRR once the sliders rest for REST_SECONDS."""
        loop = asyncio.get_event_loop()
        if self._rest is not None:
            self._rest.cancel()
        self._rest = loop.call_later(REST_SECONDS, self._full_size)

    def _full_size(self) -> None:
        with self.state:
            self.guard(self.refresh)

    def refresh(self, longest: int | None = None) -> None:
        """Redraw the picture (``longest``: the DRR coarse, while a slider moves)."""
        if self.session.frame is None:
            return
        t0 = time.perf_counter()
        view = int(self.state.view or 0)
        rgb = self.session.overlay(longest, drr=self.state.show_drr, masks=self.state.show_masks,
                                   view=view if view < len(self.session.view_names) else 0)
        self.state.overlay = data_url(rgb)
        if longest is not None:
            self._times = (self._times + [time.perf_counter() - t0])[-50:]
            mean = sum(self._times) / len(self._times)
            self.state.preview_stats = f"preview {longest} px: {1000 * mean:.1f} ms per update ({1 / mean:.0f} per s)"

    def on_registered(self, registered) -> None:
        if registered and list(registered) != self.session.bones:
            self.session.select_bones(list(registered))
            self.refresh()

    def on_frame(self, index) -> None:
        if self.session.frame is not None and int(index) != self.session.frame_index:
            self.session.show_frame(int(index))
            self.state.update({"results": [], "has_result": False})
            self.refresh()

    def predict(self) -> None:
        self.session.predict_masks(self.state.model_dir.strip())
        self.refresh()

    def register(self) -> None:
        if self.session.frame is None:
            raise FluoroRegError("no data loaded; press 'Built-in phantom' or load a data folder first")
        self.session.start_registration(use_masks=self.state.use_masks)
        self.state.update({"running": True, "progress": 0, "results": [], "status": self.session.progress.message})
        asyncio.get_event_loop().create_task(self.follow())

    async def follow(self) -> None:
        """Follow the child process every 0.1 s until it ends (the page updated twice a second: a
        browser redrawing faster takes CPU from the registration); then show the result."""
        shown = 0.0
        while self.session.running:
            progress = self.guard(self.session.poll)
            if progress is not None and time.perf_counter() - shown > 0.5:
                shown = time.perf_counter()
                with self.state:
                    self.state.progress = round(100 * progress.fraction)
                    self.state.status = progress.message
            await asyncio.sleep(0.1)
        progress = self.session.progress
        with self.state:
            self.state.update({"running": False, "progress": round(100 * progress.fraction), "status": progress.message,
                               "results": list(progress.results.values()), "has_result": bool(self.session.result_poses),
                               "export_href": "data:application/json;charset=utf-8,"
                               + urllib.parse.quote(self.session.export_poses())})
            if progress.message.startswith("Error: "):
                self.state.error = progress.message.removeprefix("Error: ")
            self.guard(self.refresh)

    def load_track(self) -> None:
        """A tracking run over the loaded case: its curves, and each frame's tracked outlines."""
        import base64
        from pathlib import Path

        folder = Path(self.state.track_dir.strip())
        counts = self.session.load_track(folder)
        curves = folder / "kinematics.png"
        self.state.kinematics = ("data:image/png;base64," + base64.b64encode(curves.read_bytes()).decode("ascii")
                                 if curves.is_file() else "")
        self.state.track_summary = (f"{sum(counts.values())} tracked frames: {counts['ok']} ok, {counts['check']} "
                                    f"check, {counts['failed']} failed; move the frame slider")
        self.refresh()

    def take_result(self) -> None:
        self.session.take_result_as_start()
        self.show_bone()


def _number(value) -> bool:
    """A slider or number field's value that can be used (a half-typed field is skipped)."""
    try:
        return value is not None and float(value) == float(value)
    except (TypeError, ValueError):
        return False


def build_ui(server) -> None:
    """The page: a drawer with the workflow, the frame with its overlays in the middle."""
    from trame.ui.vuetify3 import SinglePageWithDrawerLayout
    from trame.widgets import client, html
    from trame.widgets import vuetify3 as v

    with SinglePageWithDrawerLayout(server, full_height=True) as layout:
        layout.title.set_text("FluoroRegistration")
        layout.drawer.width = 400
        # the footer's busy spinner turns at every slider event and has the browser repaint and re-render
        # the page continuously: on 2 software-rendered cores it halved the pictures per second
        layout.footer.clear()
        layout.footer.hide()
        # and the sliders' gliding thumbs (a transition per key press) cost as much again: they jump
        client.Style(".v-slider-thumb, .v-slider-track__fill { transition: none !important; }")
        with layout.drawer:
            with v.VCard(classes="ma-2", title="Data"):
                with v.VCardText():
                    v.VBtn("Built-in phantom", id="load-phantom", click=server.controller.load_phantom, block=True,
                           classes="mb-2")
                    v.VTextField(v_model=("data_dir",), id="data-dir", label="data folder (fluororeg simulate, or CT + frames)",
                                 density="compact", hide_details=True)
                    v.VBtn("Load folder", id="load-data", click=server.controller.load_data, block=True, classes="mt-1")
                    v.VFileInput(v_model=("uploads",), id="upload", multiple=True, density="compact", classes="mt-2",
                                 label="or upload: CT, labels, labels.json, calib.json, frames", hide_details=True)
                    v.VSlider(v_model=("frame_index",), id="frame-index", label="frame", min=0, step=1,
                              max=("frame_count - 1",), v_show=("frame_count > 1",), thumb_label=True, hide_details=True)
                    html.Div("{{ views_text }}", id="views-text", v_show=("views_text",), classes="text-caption mt-1")
                    with v.VBtnToggle(v_model=("view",), id="view", v_show=("view_items.length > 1",), mandatory=True,
                                      density="compact", divided=True, variant="outlined", classes="mt-1"):
                        v.VBtn("{{ item.title }}", v_for="item in view_items", key="item.value",
                               value=("item.value",), id=("`view-${item.value}`",))
            with v.VCard(classes="ma-2", title="Start pose"):
                with v.VCardText():
                    v.VSelect(v_model=("registered",), items=("bones",), id="registered", label="bones to register",
                              multiple=True, chips=True, density="compact", hide_details=True, classes="mb-2")
                    v.VSelect(v_model=("bone",), items=("bones",), id="bone", label="sliders move", density="compact",
                              hide_details=True)
                    for k in NAMES:
                        with v.VRow(dense=True, align="center", classes="my-0"):
                            with v.VCol(cols=8):
                                v.VSlider(v_model=(f"pose_{k}",), id=f"pose-{k}", label=k, min=(f"pose_{k}_min",),
                                          max=(f"pose_{k}_max",), step=0.5, hide_details=True, density="compact",
                                          title=LABELS[k])
                            with v.VCol(cols=4):
                                v.VTextField(v_model=(f"pose_{k}",), id=f"pose-{k}-value", type="number",
                                             density="compact", hide_details=True, step=0.5)
                    v.VSwitch(v_model=("show_drr",), label="live DRR (orange)", density="compact", hide_details=True)
                    v.VSwitch(v_model=("show_masks",), label="masks (cyan)", density="compact", hide_details=True)
                    html.Div("{{ preview_stats }}", id="preview-stats", classes="text-caption")
            with v.VCard(classes="ma-2", title="Masks"):
                with v.VCardText():
                    v.VTextField(v_model=("model_dir",), id="model-dir", label="segmentation model folder",
                                 density="compact", hide_details=True)
                    v.VBtn("Predict masks", id="predict", click=server.controller.predict, block=True, classes="mt-1")
                    v.VSwitch(v_model=("use_masks",), label="register with masks", density="compact", hide_details=True)
            with v.VCard(classes="ma-2", title="Register"):
                with v.VCardText():
                    with v.VRow(dense=True):
                        with v.VCol():
                            v.VBtn("Register", id="register", color="primary", click=server.controller.register,
                                   disabled=("running",), block=True)
                        with v.VCol():
                            v.VBtn("Cancel", id="cancel", click=server.controller.cancel, disabled=("!running",),
                                   block=True)
                    v.VProgressLinear(model_value=("progress",), id="progress", height=8, classes="my-2")
                    html.Div("{{ status }}", id="status", classes="text-caption")
                    with html.Div(id="results", classes="text-body-2"):
                        html.Div("{{ line }}", v_for="line in results")
                    v.VBtn("Use result as start", id="take-result", click=server.controller.take_result,
                           disabled=("!has_result",), block=True, classes="mt-1")
                    html.A("Download poses (JSON)", id="export", href=("export_href",), download="poses.json",
                           v_show=("export_href",))
            with v.VCard(classes="ma-2", title="Tracking results"):
                with v.VCardText():
                    v.VTextField(v_model=("track_dir",), id="track-dir", label="fluororeg track --out folder",
                                 density="compact", hide_details=True)
                    v.VBtn("Show tracking", id="load-track", click=server.controller.load_track, block=True,
                           classes="mt-1")
                    html.Div("{{ track_summary }}", id="track-summary", classes="text-caption")
                    with html.A(href=("kinematics",), target="_blank", v_show=("kinematics",),
                                title="the curves full size"):
                        html.Img(src=("kinematics",), id="kinematics", style="width: 100%; display: block;")
        with layout.content:
            with v.VContainer(fluid=True):
                v.VAlert(text=("error",), id="error", type="error", v_show=("error",), density="compact",
                         classes="mb-2")
                html.Img(src=("overlay",), id="overlay",
                         style="width: min(100%, 85vh); image-rendering: pixelated; display: block; background: #000;"
                         " border: 1px solid #888;")
                html.Div("frame (grey), DRR at the start pose (orange), masks (cyan), registered or tracked bones "
                         "(green)", classes="text-caption")


def serve(data: str | None = None, host: str = "127.0.0.1", port: int = 8080, open_browser: bool = False) -> None:
    """Build the page on a new trame server over trame-slicer's scene and serve it (blocks)."""
    try:
        from trame.app import get_server
        from trame_slicer.core import SlicerApp
    except ModuleNotFoundError as err:
        raise FluoroRegError(f"fluororeg gui needs trame-slicer ({err.name} is missing); install it with "
                             "pip install 'trame-slicer[standalone]' (or the project's [gui] extra)") from None
    server = get_server("fluororeg", client_type="vue3")
    server.state.trame__title = "FluoroRegistration"
    page = RegistrationPage(server, WebSession(SlicerApp().scene))
    page.load(data)
    build_ui(server)
    _check_port(host, port)
    server.start(host=host, port=port, open_browser=open_browser, show_connection_info=True)


def _check_port(host: str, port: int) -> None:
    """One line when the address cannot be served (in use, or not this machine's)."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise FluoroRegError(f"cannot serve on {host}:{port} ({err.strerror}); pass another --port "
                                 "(or --port 0 for any free one)") from None

