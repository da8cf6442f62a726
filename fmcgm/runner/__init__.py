"""The one door into ComfyUI, and headless runs of saved workflows: ``python -m fmcgm run WORKFLOW``.

- ``boot``: ComfyUI imported into this process with its own options (the only place that does).
- ``lanes``: the ComfyUI versions the pack is developed against, fetched into ``.cache/``.
- ``inputs``: set a workflow's inputs by node title and input name ("Load Image.image=cat.png").
- ``inprocess``: ComfyUI imported from its folder into this process (nodes and custom nodes
  loaded as main.py loads them), prompts run through its executor.
- ``client``: a running ComfyUI server over HTTP (/object_info, /upload/image, /prompt, /history,
  /view), standard library only.
- ``server_process``: start ComfyUI's main.py as a child process that dies with its parent.
- ``frontend``: ComfyUI's frontend in headless Chromium (the workflow builder, the tests).
- ``outputs``: every picture and text a run produced, saved under a name that says what it is.
- ``run``: the command: one run, or a folder of pictures spread across sessions, with progress.

Both session kinds offer the same methods (``object_info``, ``add_picture``, ``run``,
``read_image``), so the command and the evaluation job (``fmcgm.evaljob``) use either.
Nothing here imports ComfyUI until a session is opened.
"""
