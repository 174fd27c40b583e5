"""Serving with Triton Inference Server.

- :mod:`~avsal_deploy.serving.contract`: the wire contract every part below shares (model and
  tensor names, wire shapes, model parameters, errors and their responses);
- :mod:`~avsal_deploy.serving.repository`: ``build_repository(export_dir, out_dir, ...)`` writes a
  model repository from an export's manifest (one model per component + ``avsal_pipeline``,
  ``avsal_stream`` and ``avsal_video``);
- :mod:`~avsal_deploy.serving.server`: ``TritonServer(repo)`` runs the ``tritonserver`` binary of
  the ``nvidia-pytriton`` wheel (the ``serve`` extra) as a subprocess;
- :mod:`~avsal_deploy.serving.client`: the ``triton`` engine backend (``TritonEngine``, the engine
  protocol over HTTP/gRPC with the DDIM loop on the server or the client), ``stream`` and
  ``predict_video`` for raw media;
- :mod:`~avsal_deploy.serving.player`: ``play`` streams a file or a live input through a server;
- :mod:`avsal_deploy.serving.models` and :mod:`~avsal_deploy.serving.window_engine`: the code the
  server runs (imported by the ``model.py`` templates in ``serving/templates/``).

Submodules are not imported here: the python-backend stubs import only what their model needs.
"""
