"""The web UI: four screens (data, train, listen, evaluate/export) over the toolkit's Python API.

``scripts/webui.py`` starts it. The screens (:mod:`utils.webui.app`) call only
:mod:`utils.webui.engine`; training runs in a child process (:mod:`utils.webui.worker`) that the
server owns, and every screen reads its state back from the run folder (:mod:`utils.webui.run_view`).
"""
